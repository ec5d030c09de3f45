"""Typed loader of params.yaml, the single source of truth of a study.

`load_params(path)` returns a frozen `Params` tree; an unknown key, a wrong type or an out-of-range value
raises `ConfigError` with one line naming the file, the dotted key and what was expected. Every stage reads
its own section from the returned object; nothing else in the package opens params.yaml.

An overrides file (e.g. `configs/paper.yaml`, the paper's study) holds only the keys that differ from
params.yaml; `merge` lays it over params.yaml key by key (a mapping merges, any other value replaces), and
`write_merged` (`sonotune params configs/paper.yaml`) writes the result back to params.yaml, comments kept, once
the merged tree validates — DVC reads params.yaml only, so that is how a study switches configuration.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sonotune.errors import ConfigError
from sonotune.vocabulary import DEFAULT_CLASSES, Label, Protocol, Strategy

PARAMS_FILE = "params.yaml"  # where DVC and every command read the study's parameters

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
ClassWeight = Literal["none", "balanced"]  # none: the paper's unweighted loss


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


HashDistance = Annotated[int, Field(ge=0, le=32)]  # Hamming distance between 64-bit perceptual hashes


class SourceSection(Section):
    """What every dataset entry may set besides its loader's keys."""

    # near duplicates of this dataset: hashes at most this far apart; null = exact duplicates only.
    # Left out: prepare.near_duplicate_distance (see `near_duplicate_distance` below).
    near_duplicate_distance: HashDistance | None = None


class PhantomSource(SourceSection):
    kind: Literal["phantom"]
    # folder `sonotune phantom --dataset NAME` writes the set to and prepare reads it from (the demo: data/phantom,
    # versioned by data.dvc); null: prepare renders the set itself into its output folder
    root: str | None = None
    n_benign: PositiveInt = 437
    n_malignant: PositiveInt = 210
    image_size: Annotated[int, Field(ge=32, le=1024)] = 128


# the study's reading of DDTI's TI-RADS scores (Bal-Ghaoui et al.): 2, 3 benign; 4a, 4b, 4c, 5 malignant
PAPER_TIRADS: dict[str, Label] = {
    "2": "benign", "3": "benign", "4a": "malignant", "4b": "malignant", "4c": "malignant", "5": "malignant",
}


class FolderSource(SourceSection):
    kind: Literal["folder"]
    root: str
    # class folder name -> label ("benign" | "malignant"); folders not listed are ignored
    classes: dict[str, Label] = DEFAULT_CLASSES


class MendeleySource(SourceSection):
    """Breast Ultrasound Image (Rodrigues, Mendeley Data 2017): class folders of greyscale BMP."""

    kind: Literal["mendeley"]
    root: str = "data/mendeley"
    classes: dict[str, Label] = DEFAULT_CLASSES
    clip_frames: PositiveInt = 5  # usN.bmp: N = 1–5, 6–10, … are frames of one clip (one group); 1 = no clips


class BusiSource(SourceSection):
    """BUSI (Al-Dhabyani et al. 2020): Dataset_BUSI_with_GT/{benign,malignant,normal} with `_mask` files."""

    kind: Literal["busi"]
    root: str = "data/busi/Dataset_BUSI_with_GT"
    normal: Literal["exclude", "benign"] = "exclude"  # exclude: the paper's 437 + 210; benign: normal joins benign


class DdtiSource(SourceSection):
    """DDTI (Pedraza et al. 2015): flat folder of <case>_<k>.jpg and <case>.xml holding <tirads>."""

    kind: Literal["ddti"]
    root: str = "data/ddti"
    tirads: dict[str, Label] = PAPER_TIRADS  # TI-RADS score (lower case) -> label; other scores are excluded


class CsvSource(SourceSection):
    """A manifest file with columns path,label[,group] (e.g. BUS-BRA, BrEaST with their patient ids)."""

    kind: Literal["csv"]
    manifest: str
    root: str | None = None  # folder the CSV's paths are relative to (and must stay under); default: the CSV's folder
    labels: dict[str, Label] = DEFAULT_CLASSES  # value in the CSV's label column -> label


DatasetSource = Annotated[
    Union[PhantomSource, FolderSource, MendeleySource, BusiSource, DdtiSource, CsvSource],
    Field(discriminator="kind"),
]


class Study(Section):
    datasets: Annotated[list[str], Field(min_length=1)]
    backbones: Annotated[list[str], Field(min_length=1)]
    strategies: Annotated[list[Strategy], Field(min_length=1)]


class Prepare(Section):
    resize: Literal["stretch", "pad"] = "stretch"
    # near duplicates: 64-bit perceptual hashes at most this Hamming distance apart; null = exact duplicates only
    # (each dataset entry may override it with its own near_duplicate_distance)
    near_duplicate_distance: HashDistance | None = 6
    label_conflicts: Literal["exclude", "keep"] = "exclude"  # one image under two labels
    strict: bool = False  # stop at the first bad image instead of excluding it with its reason


class CV(Section):
    n_splits: Annotated[int, Field(ge=2, le=20)] = 5
    val_fraction: Fraction = 0.2
    # repeated cross-validation: repeat r re-splits with cv.repeat_seed(seed, r) and retrains every fold
    repeats: Annotated[int, Field(ge=1, le=100)] = 1


class Finetune(Section):
    weights: str | None = None
    input_size: Annotated[int, Field(ge=32, le=1024)] | None = None
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 4
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-4
    dense_units: PositiveInt = 512
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    freeze_bn: bool = False
    monitor: Literal["val_auc", "val_loss"] = "val_auc"
    log_models: Literal["none", "best", "all"] = "none"
    prefix_cache: bool = True  # exact frozen-prefix cache (models/prefix_cache.py)
    class_weight: ClassWeight = "none"  # balanced: each class weighs n / (2 · n_class) in the loss
    parallel_folds: bool = True  # JAX backend: every fold of a configuration trained at once (models/batched.py)
    precision: Literal["float32", "mixed_bfloat16"] = "float32"  # Keras dtype policy of the model's layers


PositiveFloat = Annotated[float, Field(gt=0.0)]


class SvmOptuna(Section):
    """`svm.search: optuna`: a seeded TPE study over log-uniform C per outer fold."""

    n_trials: PositiveInt = 20
    c_min: PositiveFloat = 1e-4
    c_max: PositiveFloat = 100.0
    storage: Annotated[str, Field(min_length=1)] | None = None  # SQLAlchemy URL; None: SQLite in the stage's output

    @model_validator(mode="after")
    def _range_not_empty(self) -> "SvmOptuna":
        if self.c_min >= self.c_max:
            raise ValueError(f"c_min ({self.c_min}) must be smaller than c_max ({self.c_max})")
        return self


class Svm(Section):
    features: Literal["pooled", "dense"] = "pooled"
    search: Literal["grid", "optuna"] = "grid"
    c_grid: Annotated[list[PositiveFloat], Field(min_length=1)] = [0.1, 1.0, 10.0, 100.0]
    inner_splits: Annotated[int, Field(ge=2, le=20)] = 5
    class_weight: ClassWeight = "none"  # balanced: SVC(class_weight='balanced')
    optuna: SvmOptuna = SvmOptuna()


class Report(Section):
    table4_strategy: Strategy = 15
    n_bootstrap: Annotated[int, Field(ge=100, le=100_000)] = 1000
    n_permutations: Annotated[int, Field(ge=99, le=100_000)] = 999
    alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.05
    interval: Literal["clustered", "bootstrap"] = "clustered"
    paired_test: Literal["clustered_delong", "permutation", "delong", "bootstrap"] = "clustered_delong"
    equivalence_margin: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.05  # ±ΔAUC called "equivalent" (TOST)
    log_to_mlflow: bool = True


class Deploy(Section):
    threshold: Fraction = 0.5  # malignant when the deployed model's probability >= threshold
    registered_model: Annotated[str, Field(min_length=1)] | None = None  # registry name; null: sonotune-<dataset>
    alias: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")] = "champion"  # set by `sonotune promote`


class Pretrain(Section):
    """`sonotune pretrain`: a backbone trained on a synthetic source task, named by finetune.weights (docs/pretrain.md)."""

    source: Literal["phantom"] = "phantom"  # fresh phantom cases from a random stream the study never uses
    n_images: Annotated[int, Field(ge=8, le=100_000)] = 600  # source images, half benign, half malignant
    image_size: Annotated[int, Field(ge=32, le=1024)] = 128  # side they are simulated at, before resizing
    input_size: Annotated[int, Field(ge=32, le=1024)] | None = None  # px; None: finetune.input_size (or native)
    val_fraction: Fraction = 0.2  # held-out source images that pick the best epoch
    epochs: Annotated[int, Field(ge=0)] = 4  # 0: nothing trained, the seeded random initialisation is saved
    batch_size: PositiveInt = 32
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    freeze_bn: bool = False  # BatchNormalization kept in inference mode (identity statistics) while training


RESERVED_DATASET_NAMES = {"pretrain"}  # prepared/pretrain holds the pretrained backbones


class Gradcam(Section):
    study_images: Annotated[int, Field(ge=0, le=32)] = 2  # overlays logged per fold run (first test images)
    alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.4  # opacity of the heat map at its hottest


class Params(Section):
    seed: Annotated[int, Field(ge=0)] = 42
    protocol: Protocol = "leakage_free"
    study: Study
    datasets: dict[str, DatasetSource]
    prepare: Prepare = Prepare()
    cv: CV = CV()
    finetune: Finetune = Finetune()
    svm: Svm = Svm()
    report: Report = Report()
    deploy: Deploy = Deploy()
    gradcam: Gradcam = Gradcam()
    pretrain: Pretrain = Pretrain()

    @model_validator(mode="after")
    def _study_names_exist(self) -> "Params":
        for name in RESERVED_DATASET_NAMES & set(self.datasets):
            raise ValueError(f"datasets.{name}: the name is reserved (prepared/{name} holds pretrained backbones)")
        for name in self.study.datasets:
            if name not in self.datasets:
                raise ValueError(
                    f"study.datasets: '{name}' is not defined under datasets (defined: {sorted(self.datasets)})"
                )
        return self


def near_duplicate_distance(source: SourceSection, prepare: Prepare) -> int | None:
    """The dataset's near-duplicate threshold: its own `near_duplicate_distance` when the entry sets one (null
    included), else `prepare.near_duplicate_distance`."""
    if "near_duplicate_distance" in source.model_fields_set:
        return source.near_duplicate_distance
    return prepare.near_duplicate_distance


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    message = error["msg"].removeprefix("Value error, ")
    got = f" (got {error['input']!r})" if error["type"] not in {"missing", "model_attributes_type"} else ""
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    return f"{key}: {message}{got}" if key else f"{message}{got}"


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    """Validate an already-parsed params mapping; raise ConfigError naming the first bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc.errors()[0])}") from None
    from sonotune.models.backbones import BACKBONES  # late import: keeps config free of Keras at import

    for name in params.study.backbones:
        if name not in BACKBONES:
            raise ConfigError(
                f"{source}: study.backbones: unknown backbone '{name}' (valid: {', '.join(sorted(BACKBONES))})"
            )
    return params


def read_yaml(path: str | Path) -> object:
    """A YAML file's content; ConfigError naming the file when it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except _DuplicateKey as exc:
        raise ConfigError(f"{path}: {exc}: keep one of them (DVC refuses the file too)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                continue  # an unhashable key: SafeLoader's own error names it
            if key in seen:
                raise _DuplicateKey(f"key '{key}' appears twice (lines {seen[key]} and {key_node.start_mark.line + 1})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml."""
    return parse_params(read_yaml(path), str(path))


def merge(base: dict, overrides: dict) -> dict:
    """`overrides` laid over `base`: a mapping in both merges key by key, any other value replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        both_mappings = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = merge(base[key], value) if both_mappings else value
    return merged


def merged_params(base: str | Path, overrides: list[str | Path]) -> dict:
    """params.yaml with each overrides file laid over it in turn, validated; ConfigError names the bad file."""
    raw = read_yaml(base)
    if not isinstance(raw, dict):
        raise ConfigError(f"{base}: expected a mapping of sections at the top level")
    for path in overrides:
        layer = read_yaml(path)
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        raw = merge(raw, layer)
        parse_params(raw, f"{path} (merged over {base})")
    parse_params(raw, str(base))
    return raw


def _update_in_place(document, values: dict) -> None:
    """Set `values` into a ruamel round-trip mapping, keeping the comments of the keys that stay."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            _update_in_place(document[key], value)
        elif document.get(key) != value or type(document.get(key)) is not type(value):
            document[key] = value


def write_merged(base: str | Path, overrides: list[str | Path], out: str | Path | None = None) -> Path:
    """Write params.yaml (`base`) with the overrides laid over it to `out` (default: `base` itself), keeping
    `base`'s comments; validated before anything is written, replaced in one rename."""
    from ruamel.yaml import YAML

    merged = merged_params(base, overrides)
    rt = YAML()
    rt.preserve_quotes = True
    document = rt.load(Path(base).read_text())
    _update_in_place(document, merged)
    out = Path(out or base)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w") as stream:
        rt.dump(document, stream)
    os.replace(tmp, out)
    return out


def default(section: type[BaseModel], key: str):
    """The default of one params key (for CLI options that stand for it)."""
    return section.model_fields[key].default


def flatten(params: BaseModel | dict, prefix: str = "") -> dict[str, object]:
    """Flatten a (sub)tree of params to dotted keys, for MLflow params."""
    data = params.model_dump() if isinstance(params, BaseModel) else params
    flat: dict[str, object] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def require_dataset(params: Params, name: str, source: str | Path = PARAMS_FILE) -> None:
    """Validation of a `--dataset` option: `name` must be defined under `datasets:` (checked before a stage
    trains, so an undefined name is not answered with "run `sonotune prepare` first")."""
    if name not in params.datasets:
        raise ConfigError(f"--dataset {name}: not defined under `datasets:` in {source} "
                          f"(defined: {', '.join(sorted(params.datasets))})")
