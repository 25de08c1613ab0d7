"""Model configuration and the named presets of the paper's size table (PAPER.md, "Sizes").

Dimension glossary used throughout the package:
    B batch, T time steps, D = x_dim (frame size), Z = z_dim, H = h_dim (LSTM units), K = n_mix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MODELS = ("vrnn", "vrnn-i", "rnn")
OUTPUTS = ("gauss", "gmm", "bigmm", "bernoulli")
_BLOCKS = ("phi_x", "phi_z", "enc", "prior", "dec")
# Upper bounds of the float options (see VRNNConfig): beyond them a model cannot train (z-scored data).
FLOAT_BOUNDS = {"sigma_floor": 1.0, "init_scale": 1.0, "lr": 10.0}


@dataclass(frozen=True)
class VRNNConfig:
    """Sizes and options of one VRNN.

    Each MLP block (phi_x, phi_z, encoder ``enc``, prior, decoder ``dec``) is ``<block>_layers``
    ReLU layers of width ``<block>_dim``. ``model`` is ``"vrnn"`` (learned prior), ``"vrnn-i"``
    (prior N(0, I)) or ``"rnn"`` (no latent). ``output`` is the decoder's distribution: diagonal
    ``"gauss"``, a ``K = n_mix`` component diagonal ``"gmm"`` over the whole frame, or ``"bigmm"``
    (handwriting: bivariate GMM with correlation on (dx, dy) plus a Bernoulli pen bit; x_dim = 3), or
    ``"bernoulli"`` (an independent Bernoulli per dimension, for data in [0, 1]: binary piano rolls, event
    streams; exact for binary data; ``sigma_floor`` and ``n_mix`` are unused).
    ``lr`` and ``batch_size`` are the preset's training defaults.

    Bounds: ``sigma_floor`` in (0, 1] (the data is z-scored: a floor above 1 would forbid any sharper fit),
    ``init_scale`` in (0, 1] (uniform init; wider saturates every layer), ``lr`` in (0, 10] (Adam moves each
    weight by about lr per step) and a finite ``sigma_bias_init``.
    """

    x_dim: int = 200
    z_dim: int = 200
    h_dim: int = 2000
    phi_x_dim: int = 600
    phi_x_layers: int = 4
    phi_z_dim: int = 600
    phi_z_layers: int = 4
    enc_dim: int = 600
    enc_layers: int = 4
    prior_dim: int = 600
    prior_layers: int = 4
    dec_dim: int = 600
    dec_layers: int = 4
    model: str = "vrnn"
    output: str = "gauss"
    n_mix: int = 20
    sigma_floor: float = 1e-4
    sigma_bias_init: float = 0.6
    init_scale: float = 0.08
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {self.output!r}")
        sizes = ["x_dim", "z_dim", "h_dim", "n_mix", "batch_size"]
        sizes += [f"{b}_{s}" for b in _BLOCKS for s in ("dim", "layers")]
        for name in sizes:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, high in FLOAT_BOUNDS.items():
            value = getattr(self, name)
            if not _is_number(value) or not 0 < value <= high:
                raise ValueError(f"{name} must be a number in (0, {high:g}], got {value!r}")
        if not _is_number(self.sigma_bias_init) or not math.isfinite(self.sigma_bias_init):
            raise ValueError(f"sigma_bias_init must be a finite number, got {self.sigma_bias_init!r}")
        if self.output == "bigmm" and self.x_dim != 3:
            raise ValueError(f"output='bigmm' models [pen, dx, dy]: x_dim must be 3, got {self.x_dim}")
        if self.output == "gmm" and self.n_mix < 2:
            raise ValueError("output='gmm' needs n_mix >= 2 (use output='gauss' for one component)")

    @property
    def has_latent(self) -> bool:
        return self.model != "rnn"

    def replace(self, **changes) -> VRNNConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> VRNNConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown VRNNConfig fields: {sorted(unknown)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> VRNNConfig:
        """The named configuration (see :meth:`presets`), with optional field overrides."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(cls.presets())}")
        return dataclasses.replace(_PRESETS[name], **overrides)

    @staticmethod
    def presets() -> list[str]:
        """Names of all presets."""
        return sorted(_PRESETS)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _mlps(**widths_and_depths) -> dict:
    """Expand ``phi_x=(600, 4)`` into ``phi_x_dim=600, phi_x_layers=4``."""
    out = {}
    for block, (dim, layers) in widths_and_depths.items():
        out[f"{block}_dim"], out[f"{block}_layers"] = dim, layers
    return out


def _build_presets() -> dict[str, VRNNConfig]:
    p: dict[str, VRNNConfig] = {}
    # Blizzard (official code): x 200, z 200, LSTM 4000, batch 128, lr 3e-4.
    blizzard = dict(x_dim=200, z_dim=200, h_dim=4000, batch_size=128, lr=3e-4)
    all500 = _mlps(phi_x=(500, 4), phi_z=(500, 4), enc=(500, 4), prior=(500, 4), dec=(500, 4))
    gauss_sizes = _mlps(phi_x=(600, 4), phi_z=(500, 4), enc=(500, 4), prior=(500, 4), dec=(600, 4))
    p["blizzard-vrnn-gmm"] = VRNNConfig(**blizzard, **all500, model="vrnn", output="gmm")
    p["blizzard-vrnn-gauss"] = VRNNConfig(**blizzard, **gauss_sizes, model="vrnn", output="gauss")
    p["blizzard-vrnn-i-gauss"] = VRNNConfig(**blizzard, **gauss_sizes, model="vrnn-i", output="gauss")
    p["blizzard-rnn-gmm"] = VRNNConfig(**blizzard, **_mlps(phi_x=(700, 4), dec=(700, 4)), model="rnn", output="gmm")
    p["blizzard-rnn-gauss"] = VRNNConfig(**blizzard, **_mlps(phi_x=(800, 4), dec=(800, 4)), model="rnn", output="gauss")
    # TIMIT / Accent (paper): LSTM 2000, 4 ReLU layers of 600. Each RNN baseline's phi_x and decoder
    # widths are chosen so its parameter count is within 1% of the matching VRNN's (tests check it).
    for dataset, batch in (("timit", 64), ("accent", 128)):
        speech = dict(x_dim=200, z_dim=200, h_dim=2000, batch_size=batch, lr=1e-3)
        all600 = _mlps(phi_x=(600, 4), phi_z=(600, 4), enc=(600, 4), prior=(600, 4), dec=(600, 4))
        p[f"{dataset}-vrnn-gauss"] = VRNNConfig(**speech, **all600, model="vrnn", output="gauss")
        p[f"{dataset}-vrnn-gmm"] = VRNNConfig(**speech, **all600, model="vrnn", output="gmm")
        p[f"{dataset}-vrnn-i-gauss"] = VRNNConfig(**speech, **all600, model="vrnn-i", output="gauss")
        rnn_gauss, rnn_gmm = _mlps(phi_x=(1160, 4), dec=(1160, 4)), _mlps(phi_x=(1020, 4), dec=(1020, 4))
        p[f"{dataset}-rnn-gauss"] = VRNNConfig(**speech, **rnn_gauss, model="rnn", output="gauss")
        p[f"{dataset}-rnn-gmm"] = VRNNConfig(**speech, **rnn_gmm, model="rnn", output="gmm")
    # IAM-OnDB (official code): [pen, dx, dy], z 50, LSTM 1200, one ReLU layer per block, batch 20.
    # "Gauss" on handwriting = one bivariate component (n_mix=1) plus the pen bit.
    iam = dict(x_dim=3, z_dim=50, h_dim=1200, batch_size=20, lr=3e-4, output="bigmm")
    iam_mlps = _mlps(phi_x=(250, 1), phi_z=(150, 1), enc=(150, 1), prior=(150, 1), dec=(250, 1))
    for model in MODELS:
        for kind, n_mix in (("gmm", 20), ("gauss", 1)):
            p[f"iamondb-{model}-{kind}"] = VRNNConfig(**iam, **iam_mlps, model=model, n_mix=n_mix)
    # CPU-sized versions of the speech and IAM-OnDB families for docs/reproduction.md (Table 1 on a 2-core
    # CPU): speech LSTM 256, z 32, 2 ReLU layers of 256; handwriting LSTM 128, z 16, one layer (phi_x, dec 128;
    # phi_z, enc, prior 64). RNN baselines are parameter-matched to the VRNN with the same output (within 1%).
    cpu_speech = dict(x_dim=200, z_dim=32, h_dim=256, batch_size=32, lr=1e-3)
    all256 = _mlps(phi_x=(256, 2), phi_z=(256, 2), enc=(256, 2), prior=(256, 2), dec=(256, 2))
    p["cpu-speech-vrnn-gauss"] = VRNNConfig(**cpu_speech, **all256, model="vrnn", output="gauss")
    p["cpu-speech-vrnn-gmm"] = VRNNConfig(**cpu_speech, **all256, model="vrnn", output="gmm")
    p["cpu-speech-vrnn-i-gauss"] = VRNNConfig(**cpu_speech, **all256, model="vrnn-i", output="gauss")
    p["cpu-speech-rnn-gauss"] = VRNNConfig(**cpu_speech, **_mlps(phi_x=(483, 2), dec=(483, 2)), model="rnn",
                                           output="gauss")
    p["cpu-speech-rnn-gmm"] = VRNNConfig(**cpu_speech, **_mlps(phi_x=(328, 2), dec=(328, 2)), model="rnn",
                                         output="gmm")
    cpu_hw = dict(x_dim=3, z_dim=16, h_dim=128, batch_size=32, lr=1e-3, output="bigmm")
    cpu_hw_mlps = _mlps(phi_x=(128, 1), phi_z=(64, 1), enc=(64, 1), prior=(64, 1), dec=(128, 1))
    for kind, n_mix, rnn_width in (("gmm", 20, 221), ("gauss", 1, 237)):
        for model in ("vrnn", "vrnn-i"):
            p[f"cpu-handwriting-{model}-{kind}"] = VRNNConfig(**cpu_hw, **cpu_hw_mlps, model=model, n_mix=n_mix)
        rnn_mlps = _mlps(phi_x=(rnn_width, 1), dec=(rnn_width, 1))
        p[f"cpu-handwriting-rnn-{kind}"] = VRNNConfig(**cpu_hw, **rnn_mlps, model="rnn", n_mix=n_mix)
    # Quick CPU runs and tests.
    tiny_mlps = _mlps(phi_x=(64, 1), phi_z=(32, 1), enc=(64, 1), prior=(64, 1), dec=(64, 1))
    p["tiny"] = VRNNConfig(x_dim=200, z_dim=16, h_dim=64, **tiny_mlps, n_mix=4, batch_size=16, lr=1e-3)
    p["tiny-handwriting"] = VRNNConfig(x_dim=3, z_dim=8, h_dim=64, **tiny_mlps, output="bigmm", n_mix=5,
                                       batch_size=16, lr=1e-3)
    # Binary frames of 88 (piano keys: the piano-roll size of the polyphonic-music literature), Bernoulli output.
    p["tiny-bernoulli"] = VRNNConfig(x_dim=88, z_dim=16, h_dim=64, **tiny_mlps, output="bernoulli",
                                     batch_size=16, lr=1e-3)
    # Any series: `vrnn-fast train --kind series` sets x_dim to the data's number of features.
    p["tiny-series"] = VRNNConfig(x_dim=1, z_dim=8, h_dim=64, **tiny_mlps, n_mix=4, batch_size=16, lr=1e-3)
    return p


_PRESETS = _build_presets()
