"""The short `--help` of the training commands: the command's own options first, read without importing torch,
transformers or trl (so it prints in well under a second instead of ~10 s).

A training command parses `(ScriptArguments, <Method>Config, trl.ModelConfig)`: about 900 options, the method's own
near the end. `--help` prints, in this order: the recipe and data options (the script's dataclass), the method's own
options (the fields its config class declares), a short list of the common training and model options with their
defaults, and a pointer to `--help_all` (every field of TrainingArguments / SFTConfig and ModelConfig, argparse's full
listing). Fields and defaults of the config classes are read from their source files with `ast`; a test compares them
with the imported classes.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COMMON_MODEL", "COMMON_TRAINING", "CommandHelp", "ast_fields", "format_help", "shown_default"]

# The training options most recipes set, shown with their defaults; `--help_all` lists the rest.
COMMON_TRAINING = (
    "output_dir",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_length",
    "seed",
    "bf16",
    "use_cpu",
    "activation_checkpointing",
    "logging_steps",
    "save_strategy",
    "save_steps",
    "resume_from_checkpoint",
    "push_to_hub",
    "hub_model_id",
    "report_to",
    "disable_tqdm",
)
COMMON_MODEL = (
    "model_name_or_path",
    "dtype",
    "attn_implementation",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "load_in_4bit",
)

# Where a base class of a config is defined: (package, file inside it). Read, never imported.
_KNOWN_CLASSES = {
    "SFTConfig": ("trl", "trainer/sft_config.py"),
    "_BaseConfig": ("trl", "trainer/base_config.py"),
    "TrainingArguments": ("transformers", "training_args.py"),
    "ModelConfig": ("trl", "trainer/model_config.py"),
}


@dataclass(frozen=True)
class CommandHelp:
    """What the short help of one command shows.

    Args:
        command: the subcommand (`"booster"`), shown in the usage line.
        script_cls: the command's ScriptArguments dataclass (imported: it is cheap).
        config_file: the method config's source, relative to the `hf_immunize` package.
        config_cls: the config class name in that file.
        description: the command module's docstring.
    """

    command: str
    script_cls: type
    config_file: str
    config_cls: str
    description: str = ""


@dataclass
class FieldDoc:
    name: str
    type: str
    default: str
    help: str


def _package_dir(package: str) -> Path:
    if package == "hf_immunize":
        return Path(__file__).resolve().parents[1]
    spec = importlib.util.find_spec(package)  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(next(iter(spec.submodule_search_locations)))


_LONGEST_DEFAULT = 70  # characters of a default shown; longer ones (prompt templates) are cut


def shown_default(text: str) -> str:
    """A default as the help shows it: its repr, cut to `_LONGEST_DEFAULT` characters."""
    return text if len(text) <= _LONGEST_DEFAULT else text[: _LONGEST_DEFAULT - 3] + "..."


def _constants(path: Path, seen: frozenset = frozenset()) -> dict[str, ast.AST]:
    """Module-level names bound to literals in `path`, following `from hf_immunize.x import NAME` (read, not run)."""
    out: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = node.value
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hf_immunize."):
            source = _package_dir("hf_immunize").joinpath(*node.module.split(".")[1:]).with_suffix(".py")
            if source.is_file() and source not in seen:
                names = _constants(source, seen | {path})
                for alias in node.names:
                    if alias.name in names:
                        try:  # evaluated where it is defined: its own helpers are not in this module
                            value = ast.Constant(_evaluate(names[alias.name], names, 0))
                        except ValueError:
                            value = names[alias.name]
                        out[alias.asname or alias.name] = value
    return out


def _literal(node: ast.AST | None, constants: dict[str, ast.AST]) -> str:
    if node is None:
        return "None"
    if isinstance(node, ast.Lambda):  # default_factory=lambda: [...]
        node = node.body
    try:
        return repr(_evaluate(node, constants, 0))
    except ValueError:
        return ast.unparse(node)


def _evaluate(node: ast.AST, constants: dict[str, ast.AST], depth: int):
    """A literal, a module constant, or `+` / `*` / list / tuple of those (how our defaults are written)."""
    if depth > 20:
        raise ValueError("too deep")
    if isinstance(node, ast.Name) and node.id in constants:
        return _evaluate(constants[node.id], constants, depth + 1)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
        left, right = _evaluate(node.left, constants, depth + 1), _evaluate(node.right, constants, depth + 1)
        return left + right if isinstance(node.op, ast.Add) else left * right
    if isinstance(node, ast.List | ast.Tuple):
        items = [_evaluate(e, constants, depth + 1) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    return ast.literal_eval(node)


def _field_doc(name: str, annotation: ast.AST, value: ast.AST | None, constants: dict) -> FieldDoc:
    default, help_text = None, ""
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "field":
        keywords = {k.arg: k.value for k in value.keywords}
        default = keywords.get("default", keywords.get("default_factory"))
        metadata = keywords.get("metadata")
        if isinstance(metadata, ast.Dict):
            for key, item in zip(metadata.keys, metadata.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "help":
                    try:
                        help_text = str(ast.literal_eval(item))
                    except ValueError:
                        help_text = ast.unparse(item)
    else:
        default = value
    help_text = " ".join(help_text.split()).replace("%%", "%")
    return FieldDoc(name, ast.unparse(annotation), _literal(default, constants), help_text)


def _class_node(path: Path, class_name: str) -> ast.ClassDef:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return node
    raise LookupError(f"class {class_name} not found in {path}")


def ast_fields(path: Path, class_name: str, inherited: bool = True) -> dict[str, FieldDoc]:
    """The dataclass fields of `class_name` in `path` (name -> FieldDoc); with `inherited`, its known bases' fields
    first, overridden by the class's own, as `dataclasses` resolves them."""
    node = _class_node(path, class_name)
    fields: dict[str, FieldDoc] = {}
    if inherited:
        for base in reversed(node.bases):
            base_name = getattr(base, "id", None) or getattr(base, "attr", None)
            if base_name in _KNOWN_CLASSES:
                package, file = _KNOWN_CLASSES[base_name]
                fields.update(ast_fields(_package_dir(package) / file, base_name))
    constants = _constants(path)
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            if "ClassVar" in ast.unparse(item.annotation):
                continue
            fields[item.target.id] = _field_doc(item.target.id, item.annotation, item.value, constants)
    return fields


def _type_name(annotation: str) -> str:
    simple = annotation.replace(" | None", "").replace("None | ", "")
    if simple.startswith("Optional[") and simple.endswith("]"):
        simple = simple[len("Optional[") : -1]
    return simple.upper()


def _lines(docs: list[FieldDoc], width: int) -> list[str]:
    out = []
    for doc in docs:
        flag = f"  --{doc.name} {_type_name(doc.type)}"
        end = "" if doc.help.endswith(".") or not doc.help else "."
        text = f"{doc.help}{end} (default: {shown_default(doc.default)})"
        wrapped = textwrap.wrap(text, width=max(40, width - 36)) or [""]
        if len(flag) <= 34:
            out.append(f"{flag:<36}{wrapped[0]}")
        else:
            out += [flag, " " * 36 + wrapped[0]]
        out += [" " * 36 + line for line in wrapped[1:]]
    return out


def _script_docs(script_cls) -> list[FieldDoc]:
    docs = []
    for f in dataclasses.fields(script_cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        docs.append(FieldDoc(f.name, annotation, default, " ".join(f.metadata.get("help", "").split())))
    return docs


def format_help(spec: CommandHelp) -> str:
    """The short help text of a command (see the module docstring)."""
    width = min(shutil.get_terminal_size((110, 24)).columns, 120)
    config_path = _package_dir("hf_immunize") / spec.config_file
    own = ast_fields(config_path, spec.config_cls, inherited=False)
    everything = ast_fields(config_path, spec.config_cls)
    model = ast_fields(_package_dir("trl") / _KNOWN_CLASSES["ModelConfig"][1], "ModelConfig")
    base = ", ".join(getattr(b, "id", "?") for b in _class_node(config_path, spec.config_cls).bases)
    common = [everything[name] for name in COMMON_TRAINING if name in everything and name not in own]
    lines = [f"usage: hf-immunize {spec.command} [--config RECIPE.yaml] [--OPTION VALUE ...]", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    lines += ["Recipe and data:"]
    lines += _lines(
        [FieldDoc("config", "path", "None", "YAML recipe: its keys set the defaults, flags override them")], width
    )
    lines += _lines(_script_docs(spec.script_cls), width)
    lines += ["", f"{spec.config_cls} (the method's own options):"]
    lines += _lines(list(own.values()), width)
    lines += ["", f"Common training options (of {base}; defaults as {spec.config_cls} declares them):"]
    lines += _lines(common, width)
    lines += ["", "Model (trl.ModelConfig):"]
    lines += _lines([model[name] for name in COMMON_MODEL if name in model], width)
    lines += [
        "",
        f"Every option (all {base} and trl.ModelConfig fields, ~900): hf-immunize {spec.command} --help_all",
        "A recipe key or flag that is not an option is an error, with the closest option names suggested.",
    ]
    return "\n".join(lines)
