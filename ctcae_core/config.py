"""Experiment configuration: one frozen dataclass per component, strict construction, named profiles.

A config is built from a plain dict (``ExperimentConfig.from_dict``), refined with dotted
overrides (``cfg.with_overrides(["model.decoder=transpose"])``) and written back as a dict that a
checkpoint carries, so a model can always be rebuilt from what was saved beside it.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the valid choices."""


DECODERS = ("upsample", "transpose")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
PHASE_INITS = ("zero", "random")
CONTRASTIVE_LAYERS = ("both", "encoder", "decoder")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the complex autoencoder (docs/model.md, "Autoencoder")."""

    in_channels: int = 3
    enc_channels: tuple[int, ...] = (128, 128, 256, 256, 256)
    enc_strides: tuple[int, ...] = (2, 1, 2, 1, 2)
    enc_kernels: tuple[int, ...] = (3, 3, 3, 3, 3)
    linear_dim: int = 256
    decoder: str = "upsample"  # "upsample" (CAE++, CtCAE) | "transpose" (CAE)
    out_conv: bool = False
    out_sigmoid: bool = False
    phase_init: str = "zero"  # input phase: "zero" (paper's default) | "random" (paper's option: U[0, 1) rad)
    # Symmetry breaking (docs/model.md): 0 keeps the paper's exact setting.
    phase_bias_init: float = 0.0  # phase biases start U(-a, a) rad instead of 0
    phase_noise: float = 0.0  # std (rad) of Gaussian noise on the input phase, training only

    def __post_init__(self) -> None:
        _choice("model.decoder", self.decoder, DECODERS)
        _choice("model.phase_init", self.phase_init, PHASE_INITS)
        for key, hi in (("phase_bias_init", math.pi), ("phase_noise", math.pi)):
            v = getattr(self, key)
            if not (math.isfinite(v) and 0.0 <= v <= hi):
                raise ConfigError(f"model.{key}: got {v}; give a number in [0, pi] (radians)")
        n = len(self.enc_channels)
        if n == 0:
            raise ConfigError("model.enc_channels: empty; give at least one layer width")
        for key in ("enc_strides", "enc_kernels"):
            if len(getattr(self, key)) != n:
                raise ConfigError(
                    f"model.{key}: has {len(getattr(self, key))} entries but model.enc_channels has {n}; "
                    f"give one per layer"
                )
        if any(s not in (1, 2) for s in self.enc_strides):
            raise ConfigError(f"model.enc_strides: got {list(self.enc_strides)}; give strides of 1 or 2")
        if self.decoder == "transpose" and any(k != 3 for k, s in zip(self.enc_kernels, self.enc_strides) if s == 2):
            raise ConfigError("model.enc_kernels: the transposed-conv decoder needs kernel 3 on stride-2 layers; "
                              "set those kernels to 3 or use model.decoder=upsample")
        _positive("model.in_channels", self.in_channels)
        _positive("model.linear_dim", self.linear_dim)
        for c in self.enc_channels + self.enc_kernels:
            _positive("model.enc_channels/enc_kernels", c)


@dataclass(frozen=True)
class ContrastiveConfig:
    """Contrastive loss on phases with pairs mined on magnitudes (weight 0 turns it off)."""

    weight: float = 0.0
    temperature: float = 0.05
    layers: str = "both"  # "both" | "encoder" | "decoder"
    enc_anchors: int = 4
    enc_positives: int = 1
    enc_top_k: int = 1
    enc_negatives: int = 2
    enc_bottom_m: int = 2
    dec_anchors: int = 100
    dec_positives: int = 1
    dec_top_k: int = 5
    dec_negatives: int = 100
    dec_bottom_m: int = 500
    dec_patch: int = 1  # p x p patches of the decoder output (2 at 64x64, 3 at 96x96)

    def __post_init__(self) -> None:
        _choice("contrastive.layers", self.layers, CONTRASTIVE_LAYERS)
        if not (math.isfinite(self.weight) and self.weight >= 0):  # NaN fails every comparison
            raise ConfigError(f"contrastive.weight: got {self.weight}; give a finite number >= 0 (0 turns the loss off)")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"contrastive.temperature: got {self.temperature}; give a finite number > 0")
        for side in ("enc", "dec"):
            pos, top = getattr(self, f"{side}_positives"), getattr(self, f"{side}_top_k")
            neg, bot = getattr(self, f"{side}_negatives"), getattr(self, f"{side}_bottom_m")
            if not 0 < pos <= top:
                raise ConfigError(f"contrastive.{side}_positives: {pos} with {side}_top_k {top}; need 0 < positives <= top_k")
            if not 0 < neg <= bot:
                raise ConfigError(f"contrastive.{side}_negatives: {neg} with {side}_bottom_m {bot}; need 0 < negatives <= bottom_m")
            _positive(f"contrastive.{side}_anchors", getattr(self, f"{side}_anchors"))
        _positive("contrastive.dec_patch", self.dec_patch)

    @property
    def enabled(self) -> bool:
        return self.weight > 0


@dataclass(frozen=True)
class DataConfig:
    """Which images to train and test on."""

    dataset: str = "tetrominoes"  # generated dataset name or a dataset directory
    resolution: int = 32
    n_train: int = 60000  # generated datasets: train split size, the 5% validation hold-out included
    n_test: int = 320
    data_seed: int = 0
    train_n_objects: str = ""  # filter on the object count for training: "" (all), "<=4", "5", "1-4", "5,6"
    test_n_objects: tuple[int, ...] = ()  # object counts also evaluated separately at test time
    cache_dir: str = ""  # "" = $CTCAE_DATA_CACHE or ~/.cache/ctcae

    def __post_init__(self) -> None:
        _positive("data.resolution", self.resolution)
        _positive("data.n_train", self.n_train)
        _positive("data.n_test", self.n_test)
        if not self.dataset:
            raise ConfigError("data.dataset: empty; give a generated dataset name or a dataset directory")
        if self.data_seed < 0:
            raise ConfigError(f"data.data_seed: got {self.data_seed}; give an integer >= 0")
        if any(k < 1 for k in self.test_n_objects):
            raise ConfigError(f"data.test_n_objects: got {list(self.test_n_objects)}; give object counts >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and evaluation schedule."""

    steps: int = 50000
    batch_size: int = 64
    lr: float = 4e-4
    eval_every: int = 1000
    eval_images: int = 320  # validation images per evaluation
    log_every: int = 50
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    inject_nan_at: int = -1  # fault injection for tests: the loss becomes NaN at this step
    # "fp32" | "bf16" | "fp16": the dtype of the linear maps (convs, linears) under autocast; the
    # phase arithmetic, norms and losses stay fp32 (docs/model.md). fp16 only on CUDA (loss scaling).
    precision: str = "fp32"
    # The same choice for the evaluations' forward (validation during training, a study's test
    # evaluation): evaluation is forward-only and its convolutions are most of its time, so bf16
    # there is the one large speed-up of evaluation; k-means, ARI and the phase spread stay fp32.
    eval_precision: str = "fp32"
    # Each evaluation also clusters colour alone (every output phase set to 0) and reports its
    # ARI-FG as ari_fg_colour (docs/model.md); false saves that second k-means (about 14% of the
    # paper CtCAE's fp32 evaluation time on one thread).
    eval_colour: bool = True
    # Off the CPU, hold the train and val splits on the training device (uint8) and gather each
    # batch there, instead of copying it from host memory every step. No effect on the CPU.
    data_on_device: bool = True

    def __post_init__(self) -> None:
        for key in ("steps", "batch_size", "eval_every", "eval_images", "log_every"):
            _positive(f"train.{key}", getattr(self, key))
        if self.seed < 0:
            raise ConfigError(f"train.seed: got {self.seed}; give an integer >= 0")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"train.lr: got {self.lr}; give a finite number > 0, e.g. 4e-4")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"train.device: {self.device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
        for key in ("precision", "eval_precision"):
            if getattr(self, key) not in PRECISIONS:
                raise ConfigError(f"train.{key}: {getattr(self, key)!r}; use one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; a checkpoint stores ``to_dict()`` of it."""

    name: str = "ctcae_tetrominoes"
    model: ModelConfig = field(default_factory=ModelConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self._check_contrastive_fits()

    def _check_contrastive_fits(self) -> None:
        """The contrastive pairs must fit in the maps they are mined on (docs/model.md): the last
        encoder map at ``data.resolution``, and the output cut into ``dec_patch`` patches."""
        cc, res = self.contrastive, self.data.resolution
        if not cc.enabled:
            return
        if cc.layers in ("both", "encoder"):
            size = res
            for s in self.model.enc_strides:
                size = -(-size // s)
            _fits("enc", cc.enc_top_k, cc.enc_bottom_m, size * size,
                  f"the last encoder map ({size}x{size} at data.resolution={res})")
        if cc.layers in ("both", "decoder"):
            if res % cc.dec_patch:
                raise ConfigError(
                    f"contrastive.dec_patch: {cc.dec_patch} does not divide data.resolution={res}; "
                    f"give a divisor of {res}"
                )
            side = res // cc.dec_patch
            _fits("dec", cc.dec_top_k, cc.dec_bottom_m, side * side,
                  f"the output in {cc.dec_patch}x{cc.dec_patch} patches ({side}x{side} at data.resolution={res})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        """Strict construction: unknown keys and wrong types raise ConfigError naming the key."""
        return _build(cls, d, prefix="")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """``{"model.decoder": "upsample", ...}`` (tuples as lists)."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if isinstance(values, dict):
                for k, v in values.items():
                    out[f"{section}.{k}"] = v
            else:
                out[section] = values
        return out

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "ExperimentConfig":
        """Apply dotted overrides, ``["model.decoder=transpose"]`` or ``{"train.steps": 10}``."""
        if isinstance(overrides, dict):
            items = list(overrides.items())
        else:
            items = []
            for item in overrides:
                if "=" not in item:
                    raise ConfigError(f"override {item!r}: no '='; write key=value, e.g. model.decoder=transpose")
                key, raw = item.split("=", 1)
                items.append((key.strip(), parse_value(key.strip(), raw)))
        d = self.to_dict()
        for key, value in items:
            _set_dotted(d, key, value)
        return ExperimentConfig.from_dict(d)


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    """The resolved field types of a config dataclass (cached: resolving them is most of a build)."""
    return typing.get_type_hints(cls)


def valid_keys() -> list[str]:
    """All dotted keys of ExperimentConfig, e.g. ``model.decoder``."""
    return list(ExperimentConfig().flat().keys())


def key_type(key: str) -> Any:
    """The annotated type of a dotted key (raises ConfigError for unknown keys)."""
    parts = key.split(".")
    cls: Any = ExperimentConfig
    tp: Any = None
    for i, part in enumerate(parts):
        hints = _hints(cls)
        if part not in hints:
            where = ".".join(parts[:i]) or "top level"
            close = [k for k in valid_keys() if k.endswith("." + parts[-1])][:1]  # "lr" -> "train.lr"
            close = close or difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys at {where}: {sorted(hints)}"
            raise ConfigError(f"unknown config key {key!r}; {hint}")
        tp = hints[part]
        cls = tp
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"config key {key!r} is a section; valid keys: {[k for k in valid_keys() if k.startswith(key + '.')]}")
    return tp


def parse_value(key: str, raw: str) -> Any:
    """Parse an override's text by the key's type: ``32,32,64`` for tuples, ``true`` for bools."""
    tp = key_type(key)
    raw = raw.strip()
    if typing.get_origin(tp) is tuple:
        if raw in ("", "()", "[]"):
            return []
        text = raw.strip("[]()")
        try:
            return [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"{key}: got {raw!r}; give comma-separated integers, e.g. 32,32,64") from None
    if tp is str:
        return raw
    if tp in (int, float):
        try:
            return tp(raw)
        except ValueError:
            raise ConfigError(f"{key}: got {raw!r}; give {_A[tp]}") from None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"{key}: cannot parse {raw!r}; give a plain value") from None
    return value


def suggest(word: str, choices: Any, what: str = "valid") -> str:
    """The "what to do" of an unknown name: the closest valid one if there is one, else all of them."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}? ({what}: {sorted(choices)})"
    return f"{what}: {sorted(choices)}"


_A = {int: "an integer", float: "a number"}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fits(side: str, top_k: int, bottom_m: int, positions: int, where: str) -> None:
    if top_k + 1 > positions or bottom_m > positions:
        raise ConfigError(
            f"contrastive.{side}_top_k {top_k} + 1 and {side}_bottom_m {bottom_m} must fit in the {positions} "
            f"positions of {where}; raise data.resolution or lower them"
        )


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not valid; use one of {list(choices)}")


def _positive(key: str, value: int) -> None:
    if not value > 0:
        raise ConfigError(f"{key}: got {value}; give a value > 0")


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    key_type(key)  # validates the key
    parts = key.split(".")
    node = d
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _check_type(key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: got {type(value).__name__} {value!r}; give a list of integers")
        return tuple(_check_type(f"{key}[{i}]", typing.get_args(tp)[0], v) for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_type(key, arg, value)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} does not match {tp}; give a value of that type")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {type(value).__name__} {value!r}; give true/false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {type(value).__name__} {value!r}; give an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {type(value).__name__} {value!r}; give a number")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: got {value!r}; give a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {type(value).__name__} {value!r}; give a string")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: got {value!r}; give null")
        return None
    raise ConfigError(f"{key}: unsupported type {tp}; this is a bug in the config schema, please report it")


def _build(cls: Any, d: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: got {type(d).__name__} {_short(d)}; give a mapping of keys to values")
    hints = _hints(cls)
    unknown = sorted(set(d) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]} at {where}; "
                          f"{suggest(unknown[0], hints, 'valid keys')}")
    kwargs = {}
    for name, value in d.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(prefix + name, tp, value)
    return cls(**kwargs)


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


# ---------------------------------------------------------------- profiles
PROFILES: dict[str, Callable[[], ExperimentConfig]] = {}

PAPER_32 = dict(enc_channels=[128, 128, 256, 256, 256], enc_strides=[2, 1, 2, 1, 2], enc_kernels=[3] * 5, linear_dim=256)
PAPER_FULL = dict(
    enc_channels=[128, 128, 256, 256, 256, 256, 256], enc_strides=[2, 1, 2, 1, 2, 1, 2], enc_kernels=[3] * 7, linear_dim=256
)
# Same structure, a quarter of the width: about 1/16 of the convolution cost (step times in README).
SMALL_32 = dict(enc_channels=[32, 32, 64, 64, 64], enc_strides=[2, 1, 2, 1, 2], enc_kernels=[3] * 5, linear_dim=64)
# Half the paper's width: between _small and the paper (about 1/4 of the paper's convolution cost).
HALF_32 = dict(enc_channels=[64, 64, 128, 128, 128], enc_strides=[2, 1, 2, 1, 2], enc_kernels=[3] * 5, linear_dim=128)
VARIANTS = {
    "cae": (dict(decoder="transpose", out_conv=True, out_sigmoid=True), 0.0),
    "caepp": (dict(decoder="upsample", out_conv=False, out_sigmoid=False), 0.0),
    "ctcae": (dict(decoder="upsample", out_conv=False, out_sigmoid=False), 1e-4),
}
# The generated stand-in for CLEVR6 is "clevr_like"; real CLEVR6 is imported to a directory (data.dataset=DIR).
DATASETS = {
    "tetrominoes": dict(dataset="tetrominoes", n_train=60000, n_test=320),
    "multi_dsprites": dict(dataset="multi_dsprites", n_train=60000, n_test=320),
    "clevr6": dict(dataset="clevr_like", n_train=50000, n_test=320),
}


def _register(name: str, d: dict[str, Any]) -> None:
    PROFILES[name] = lambda d=d, name=name: ExperimentConfig.from_dict({"name": name, **d})


def _profile_dict(variant: str, dataset: str, arch: dict[str, Any], resolution: int) -> dict[str, Any]:
    model_toggles, weight = VARIANTS[variant]
    return {
        "model": {**arch, **model_toggles},
        "contrastive": {"weight": weight},
        "data": {**DATASETS[dataset], "resolution": resolution},
    }


for _v in VARIANTS:
    for _ds in DATASETS:
        _register(f"{_v}_{_ds}", _profile_dict(_v, _ds, PAPER_32, 32))
        small = _profile_dict(_v, _ds, SMALL_32, 32)
        small["data"]["n_train"] = 20000
        small["train"] = {"steps": 3000, "eval_every": 250, "eval_images": 160}
        _register(f"{_v}_{_ds}_small", small)
        half = _profile_dict(_v, _ds, HALF_32, 32)
        half["train"] = {"eval_every": 500}
        _register(f"{_v}_{_ds}_half", half)
    full_md = _profile_dict(_v, "multi_dsprites", PAPER_FULL, 64)
    full_md["contrastive"]["dec_patch"] = 2
    _register(f"{_v}_multi_dsprites_64", full_md)
    full_cl = _profile_dict(_v, "clevr6", PAPER_FULL, 96)
    full_cl["contrastive"].update(dec_patch=3, enc_anchors=8, enc_negatives=16, enc_bottom_m=24)
    _register(f"{_v}_clevr6_96", full_cl)

# Test-sized: the same structure, tiny widths, a few steps on a few hundred generated images.
_register(
    "tiny",
    {
        "model": dict(enc_channels=[8, 8, 16, 16, 16], enc_strides=[2, 1, 2, 1, 2], enc_kernels=[3] * 5, linear_dim=16),
        "contrastive": {"weight": 1e-4, "dec_anchors": 20, "dec_negatives": 20, "dec_bottom_m": 100},
        "data": {"dataset": "tetrominoes", "n_train": 400, "n_test": 64},
        "train": {"steps": 20, "batch_size": 16, "eval_every": 10, "eval_images": 32, "log_every": 5},
    },
)


def list_profiles() -> list[str]:
    return sorted(PROFILES)


def get_profile(name: str) -> ExperimentConfig:
    """A named profile, e.g. ``ctcae_tetrominoes`` or ``caepp_multi_dsprites_small``."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; {suggest(name, PROFILES, 'valid profiles')}")
    return PROFILES[name]()


def load_config_file(path: str) -> ExperimentConfig:
    """Read a resolved config (YAML or JSON) as written beside a run."""
    try:
        return ExperimentConfig.from_dict(load_yaml_file(path))
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping holding the same key twice (YAML's "last wins")."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_file(path: str | Path) -> Any:
    """The YAML (or JSON) document of a file; duplicate keys, bad syntax and non-text are ConfigErrors.

    A missing or unreadable file raises OSError (the command's error boundary names its path).
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory; give a YAML or JSON file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (not UTF-8); give a YAML or JSON file") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({' '.join(str(exc).split())}); fix the syntax") from None
