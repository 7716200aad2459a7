"""Study files: an ablation declared as data (YAML), validated before anything runs.

A study has a base (preset + overrides, data, training budget), the variants to compare (named
override sets, or factors whose product makes the grid), the baseline variant, the seeds (the same
list for every variant, so comparisons are paired) and the objective(s). Keys that change the network
are `NetConfig.replace` keys (`mask2.enabled`, `masks.activation`, `base_width`, ...); keys that change
training start with `train.` (`train.lr`, `train.epochs`, ...).

The whole study is validated when the file is read, before any storage exists: every variant's `NetConfig`
and `TrainConfig` (types and ranges) is built, so a bad value is refused with the file and the key named.

Two keys shape the analysis, not the runs:
`rope` (float >= 0, default 0.5): the region of practical equivalence, in percentage points of the objective;
differences inside +-rope count as "equivalent" (`Study.rope`).
`common_random_numbers` (bool, default true): every variant of one seed shares the data order, augmentation
draws and initial weights of the modules they share, so paired differences are less noisy (`Study.crn`).

Example (`studies/quickstart.yaml`):

    name: quickstart
    mode: grid
    base: {model: resmasknet_tiny, data: "generated:n=3000", train: {epochs: 4}}
    variants:
      masks_on: {}
      masks_off: {masks.enabled: false}
      unapplied: {masks.application: unapplied}
    baseline: masks_off
    seeds: [0, 1, 2]
    rope: 0.5                     # optional; percentage points
    common_random_numbers: true   # optional
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resmasknet.config import ConfigError, NetConfig
from resmasknet.registry import get_config

TOP_KEYS = ("name", "description", "mode", "base", "variants", "factors", "baseline", "seeds", "objectives",
            "search", "tiny", "rope", "common_random_numbers")
TINY_KEYS = ("model", "overrides", "pretrained", "data", "train", "seeds", "n_trials", "variants")
DEFAULT_ROPE = 0.5
BASE_KEYS = ("model", "overrides", "data", "pretrained", "train", "tta")
SEARCH_KEYS = ("n_trials", "sampler", "pruner", "space", "seed")
OBJECTIVE_METRICS = ("val_acc", "test_acc", "test_acc_tta", "params", "macs", "latency_ms")
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("median", "hyperband", "none")


class StudyError(ValueError):
    """A bad study file; the message names the file, the key and what is wrong."""


def _unknown(where: str, key: str, valid: tuple[str, ...] | list[str], path: str) -> StudyError:
    near = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return StudyError(f"{path}: unknown key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")


def train_fields() -> tuple[str, ...]:
    from resmasknet.train import TrainConfig

    return tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "maximize" | "minimize"


@dataclass(frozen=True)
class Variant:
    name: str
    model: dict[str, Any]  # NetConfig.replace overrides on top of the base
    train: dict[str, Any]  # TrainConfig overrides on top of the base


@dataclass(frozen=True)
class Study:
    name: str
    path: str
    mode: str  # "grid" | "search"
    model: str
    model_overrides: dict[str, Any]
    data: str
    train: dict[str, Any]
    seeds: tuple[int, ...]
    objectives: tuple[Objective, ...]
    variants: tuple[Variant, ...] = ()
    baseline: str | None = None
    description: str = ""
    search: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # a local torchvision ResNet weights file for the backbone
    tta: bool = True  # also score the test split with the authors' 10-draw TTA (10x the test cost)
    rope: float = DEFAULT_ROPE  # region of practical equivalence, percentage points of the objective
    crn: bool = True  # common random numbers across variants (key `common_random_numbers`)

    def resolved(self, key: str) -> str | None:
        """`data` or `pretrained` with environment variables expanded; an unset variable is an error that
        names it (studies on FER2013 say `data: ${FER2013}`)."""
        value = getattr(self, key)
        if value is None:
            return None
        out = os.path.expandvars(value)
        if "$" in out:
            var = out[out.index("$"):].strip("${}").split("}")[0]
            raise StudyError(f"{self.path}: base.{key} is {value!r} but the environment variable {var} is not set; "
                             f"e.g. {var}=/path/to/fer2013.csv ablate run {self.name}")
        return out

    @property
    def cells(self) -> list[tuple[str, int]]:
        """Grid cells: every variant x every seed, in a fixed order."""
        return [(v.name, s) for v in self.variants for s in self.seeds]

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"study {self.name!r} has no variant {name!r}; variants: {[v.name for v in self.variants]}")

    def net_config(self, model_overrides: dict[str, Any]) -> NetConfig:
        return get_config(self.model, **{**self.model_overrides, **model_overrides})

    def with_tiny(self) -> Study:
        """The study shrunk to seconds (the file's `tiny:` block, else a default shrink), for tests."""
        tiny = self.raw.get("tiny") or {}
        train = {**self.train, "epochs": 1, "max_train_batches": 4, **tiny.get("train", {})}
        overrides = {**self.model_overrides, **tiny.get("overrides", {})}
        seeds = tuple(tiny.get("seeds", self.seeds[:2]))
        search = {**self.search, "n_trials": tiny.get("n_trials", 3)} if self.search else {}
        variants = self.variants
        if tiny.get("variants"):  # a subset keeps the tiny run short; the baseline always stays
            keep = set(tiny["variants"]) | {self.baseline}
            unknown = keep - {v.name for v in self.variants}
            if unknown:
                raise StudyError(f"{self.path}: tiny.variants names unknown variant(s) {sorted(map(str, unknown))}")
            variants = tuple(v for v in self.variants if v.name in keep)
        _check_train(train, "tiny.train", self.path)
        return dataclasses.replace(self, model=tiny.get("model", self.model), model_overrides=overrides,
                                   pretrained=tiny.get("pretrained", self.pretrained),
                                   data=tiny.get("data", "generated:n=140,seed=0"), train=train, seeds=seeds,
                                   search=search, variants=variants, name=self.name + "-tiny")


def _split_overrides(overrides: dict[str, Any], where: str, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(overrides, dict):
        raise StudyError(f"{path}: {where} must be a mapping of KEY: VALUE, got {type(overrides).__name__}")
    model, train = {}, {}
    valid_train = train_fields()
    for key, value in overrides.items():
        key = str(key)
        if key.startswith("train."):
            sub = key[len("train."):]
            if sub not in valid_train:
                raise _unknown(where, key, [f"train.{f}" for f in valid_train], path)
            train[sub] = value
        else:
            model[key] = value
    return model, train


def _check_model(study_model: str, base_overrides: dict, overrides: dict, where: str, path: str) -> None:
    try:
        get_config(study_model, **{**base_overrides, **overrides})
    except ConfigError as exc:
        raise StudyError(f"{path}: {where}: {exc}") from exc


def _check_train(train: dict[str, Any], where: str, path: str) -> None:
    """Build the TrainConfig (it checks types and ranges); its message names the field."""
    from resmasknet.train import TrainConfig

    try:
        TrainConfig(**train)
    except (TypeError, ValueError) as exc:
        raise StudyError(f"{path}: {where}: {exc}") from exc


def _check_tiny(tiny: Any, path: str) -> None:
    if tiny is None:
        return
    if not isinstance(tiny, dict):
        raise StudyError(f"{path}: tiny must be a mapping with keys {', '.join(TINY_KEYS)}")
    for key in tiny:
        if key not in TINY_KEYS:
            raise _unknown("tiny", key, TINY_KEYS, path)
    train = tiny.get("train") or {}
    if not isinstance(train, dict):
        raise StudyError(f"{path}: tiny.train must be a mapping of training keys")
    for key in train:
        if key not in train_fields():
            raise _unknown("tiny.train", key, train_fields(), path)


def _variant_name(assign: dict[str, Any]) -> str:
    if not assign:
        return "base"
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in assign.items())


def parse_study(raw: dict[str, Any], path: str = "<study>") -> Study:
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study file is a YAML mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_KEYS:
            raise _unknown("the study", key, TOP_KEYS, path)
    for key in ("name", "base", "seeds"):
        if key not in raw:
            raise StudyError(f"{path}: missing required key {key!r}")
    name = str(raw["name"])
    if not name.replace("-", "").replace("_", "").isalnum():
        raise StudyError(f"{path}: name {name!r} must be letters, digits, '-' or '_' (it names folders)")
    mode = raw.get("mode", "grid")
    if mode not in ("grid", "search"):
        raise StudyError(f"{path}: mode {mode!r} is not allowed; choose 'grid' or 'search'")
    base = raw["base"]
    if not isinstance(base, dict):
        raise StudyError(f"{path}: base must be a mapping with keys {', '.join(BASE_KEYS)}")
    for key in base:
        if key not in BASE_KEYS:
            raise _unknown("base", key, BASE_KEYS, path)
    if "model" not in base:
        raise StudyError(f"{path}: base.model is required (a preset; `ablate models` lists them)")
    model = str(base["model"])
    try:
        get_config(model)
    except KeyError as exc:
        raise StudyError(f"{path}: base.model: {exc.args[0]}") from exc
    base_model, base_train_from_overrides = _split_overrides(base.get("overrides") or {}, "base.overrides", path)
    _check_model(model, {}, base_model, "base.overrides", path)
    base_train = dict(base.get("train") or {})
    for key in base_train:
        if key not in train_fields():
            raise _unknown("base.train", key, train_fields(), path)
    base_train.update(base_train_from_overrides)
    _check_train(base_train, "base.train", path)
    rope = raw.get("rope", DEFAULT_ROPE)
    if isinstance(rope, bool) or not isinstance(rope, (int, float)) or not 0 <= rope < float("inf"):
        raise StudyError(f"{path}: rope={rope!r} must be a number >= 0 (percentage points of the objective)")
    crn = raw.get("common_random_numbers", True)
    if not isinstance(crn, bool):
        raise StudyError(f"{path}: common_random_numbers={crn!r} must be true or false")
    _check_tiny(raw.get("tiny"), path)
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                            for s in seeds):
        raise StudyError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"{path}: seeds {seeds!r} has repeats")

    objectives = []
    for i, obj in enumerate(raw.get("objectives") or [{"metric": "val_acc", "direction": "maximize"}]):
        if isinstance(obj, str):
            obj = {"metric": obj}
        if not isinstance(obj, dict):
            raise StudyError(f"{path}: objectives[{i}] must be a metric name or {{metric, direction}}")
        for key in obj:
            if key not in ("metric", "direction"):
                raise _unknown(f"objectives[{i}]", key, ("metric", "direction"), path)
        metric = obj.get("metric")
        if metric not in OBJECTIVE_METRICS:
            raise StudyError(f"{path}: objectives[{i}].metric={metric!r} is not allowed; "
                             f"choose one of {', '.join(OBJECTIVE_METRICS)}")
        default_dir = "minimize" if metric in ("params", "macs", "latency_ms") else "maximize"
        direction = obj.get("direction", default_dir)
        if direction not in ("maximize", "minimize"):
            raise StudyError(f"{path}: objectives[{i}].direction={direction!r}; choose maximize or minimize")
        objectives.append(Objective(metric, direction))

    variants: list[Variant] = []
    if mode == "grid":
        if "variants" in raw and "factors" in raw:
            raise StudyError(f"{path}: give either variants or factors, not both")
        if "search" in raw:
            raise StudyError(f"{path}: search: is only for mode: search")
        if "variants" in raw:
            if not isinstance(raw["variants"], dict) or not raw["variants"]:
                raise StudyError(f"{path}: variants must be a non-empty mapping NAME: {{KEY: VALUE}}")
            for k in raw["variants"]:
                if not isinstance(k, str):
                    raise StudyError(f"{path}: variant name {k!r} is not a string (YAML reads on/off/yes/no as "
                                     f"booleans): quote it, e.g. \"{str(k).lower()}\":")
            items = [(str(k), v or {}) for k, v in raw["variants"].items()]
        elif "factors" in raw:
            factors = raw["factors"]
            if not isinstance(factors, dict) or not factors or not all(isinstance(v, list) and v
                                                                       for v in factors.values()):
                raise StudyError(f"{path}: factors must map KEY: [value, value, ...]")
            keys = list(factors)
            items = [(_variant_name(dict(zip(keys, combo))), dict(zip(keys, combo)))
                     for combo in itertools.product(*factors.values())]
        else:
            raise StudyError(f"{path}: a grid study needs variants or factors")
        for vname, ov in items:
            vm, vt = _split_overrides(ov, f"variants.{vname}", path)
            _check_model(model, base_model, vm, f"variants.{vname}", path)
            _check_train({**base_train, **vt}, f"variants.{vname}", path)
            variants.append(Variant(vname, vm, vt))
        baseline = raw.get("baseline", variants[0].name)
        names = [v.name for v in variants]
        if baseline not in names:
            raise StudyError(f"{path}: baseline {baseline!r} is not a variant; variants: {', '.join(names)}")
        if len(objectives) != 1:
            raise StudyError(f"{path}: a grid study has one objective (it ranks nothing); use mode: search "
                             f"for several")
        search: dict[str, Any] = {}
    else:
        baseline = raw.get("baseline")
        search = dict(raw.get("search") or {})
        for key in search:
            if key not in SEARCH_KEYS:
                raise _unknown("search", key, SEARCH_KEYS, path)
        if not search.get("space"):
            raise StudyError(f"{path}: search.space is required: KEY: {{int: [lo, hi]}} | {{float: [lo, hi], "
                             f"log: true}} | {{choice: [a, b]}}")
        for key, spec in search["space"].items():
            _check_space(key, spec, model, base_model, path, base_train)
        search.setdefault("n_trials", 20)
        search.setdefault("sampler", "nsga2" if len(objectives) > 1 else "tpe")
        search.setdefault("pruner", "none" if len(objectives) > 1 else "median")
        if search["sampler"] not in SAMPLERS:
            raise StudyError(f"{path}: search.sampler={search['sampler']!r}; choose one of {', '.join(SAMPLERS)}")
        if search["pruner"] not in PRUNERS:
            raise StudyError(f"{path}: search.pruner={search['pruner']!r}; choose one of {', '.join(PRUNERS)}")
        if len(objectives) > 1 and search["pruner"] != "none":
            raise StudyError(f"{path}: pruning needs a single objective; set search.pruner: none")
    return Study(name=name, path=path, mode=mode, model=model, model_overrides=base_model,
                 data=str(base.get("data", "generated")), train=base_train, seeds=tuple(seeds),
                 objectives=tuple(objectives), variants=tuple(variants), baseline=baseline,
                 description=str(raw.get("description", "")), search=search, raw=raw,
                 pretrained=str(base["pretrained"]) if base.get("pretrained") else None,
                 tta=bool(base.get("tta", True)), rope=float(rope), crn=crn)


def _check_space(key: str, spec: Any, model: str, base_model: dict, path: str,
                 base_train: dict[str, Any] | None = None) -> None:
    where = f"search.space.{key}"
    if not isinstance(spec, dict) or not ({"int", "float", "choice"} & set(spec)):
        raise StudyError(f"{path}: {where} must be {{int: [lo, hi]}}, {{float: [lo, hi], log: true}} "
                         f"or {{choice: [...]}}")
    for k in spec:
        if k not in ("int", "float", "choice", "log", "step"):
            raise _unknown(where, k, ("int", "float", "choice", "log", "step"), path)
    kind = next(k for k in ("int", "float", "choice") if k in spec)
    values = spec[kind]
    if kind in ("int", "float") and (not isinstance(values, list) or len(values) != 2 or values[0] >= values[1]):
        raise StudyError(f"{path}: {where}.{kind} must be [low, high] with low < high, got {values!r}")
    if kind == "choice" and (not isinstance(values, list) or not values):
        raise StudyError(f"{path}: {where}.choice must be a non-empty list")
    samples = values
    if kind == "float":  # YAML reads 1e-4 (no dot) as a string; the sampler converts, so check converted values
        try:
            samples = [float(v) for v in values]
        except (TypeError, ValueError) as exc:
            raise StudyError(f"{path}: {where}.float must be two numbers, got {values!r}") from exc
    for v in samples:
        vm, vt = _split_overrides({key: v}, where, path)
        if vm:
            _check_model(model, base_model, vm, where, path)
        if vt:
            _check_train({**(base_train or {}), **vt}, where, path)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"duplicate key {key!r} (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class StudyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last silently: two
    `masks_on:` under `variants:` would make one variant of two). Keys merged in with `<<:` may be
    overridden, as YAML allows."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike) -> Any:
    """A study file's content; a duplicate key or a YAML error is a `StudyError` naming the file (and both
    lines of a duplicate key)."""
    p = Path(path)
    try:
        return yaml.load(p.read_text(), Loader=StudyLoader)  # noqa: S506 - StudyLoader is a SafeLoader
    except _DuplicateKey as exc:
        raise StudyError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise StudyError(f"{p}: not valid YAML: {exc}") from exc


PACKAGED_STUDIES = Path(__file__).resolve().parent / "_studies"  # the wheel's copy of the checkout's studies/


def study_folders() -> list[Path]:
    """Where a study name is looked up, first match wins: `./studies/` of the current folder or of a folder
    above it (a user's own study of a shipped name wins), the checkout's `studies/` (their source), then the
    copy packaged in the wheel (`ablate/_studies/`, written at build time; see setup.py)."""
    here = Path.cwd()  # studies/ here or in a folder above (a notebook's kernel runs in notebooks/)
    return [*(d / "studies" for d in (here, *here.parents)), Path(__file__).resolve().parents[1] / "studies",
            PACKAGED_STUDIES]


def shipped_studies() -> list[str]:
    """The names `load_study` finds in `study_folders()`, sorted."""
    return sorted({p.stem for folder in study_folders() if folder.is_dir() for p in folder.glob("*.yaml")})


def find_study(ref: str | os.PathLike) -> Path:
    """The study file `ref` names: a path, else `<name>.yaml` in the first of `study_folders()` that has it."""
    p = Path(ref)
    if p.is_file():
        return p
    if p.suffix or len(p.parts) > 1:
        raise FileNotFoundError(f"study {os.fspath(ref)!r} not found (no such file)")
    for folder in study_folders():
        if (folder / f"{ref}.yaml").is_file():
            return folder / f"{ref}.yaml"
    known = shipped_studies()
    raise FileNotFoundError(f"study {os.fspath(ref)!r} not found (a path, or a name in studies/"
                            + (f": {', '.join(known)})" if known else ")"))


def load_study(ref: str | os.PathLike) -> Study:
    """A study by path, or by name (`quickstart` -> `studies/quickstart.yaml`, looked up in `study_folders()`:
    the current folder's `studies/`, the checkout's, then the copy inside the installed package)."""
    p = find_study(ref)
    return parse_study(read_yaml(p), str(p))
