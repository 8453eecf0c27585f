"""The typed config: YAML + dotted overrides, and every problem reported at once with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmft.cli import main
from llmft.config import Config, build_config, load_config, parse_overrides, suggest_key
from llmft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def problems_of(data=None, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_config(data or {}, overrides or {})
    return info.value.problems


def test_defaults_are_the_embedded_demo():
    config = build_config()
    assert config.model.name == "tiny-llama"
    assert config.data.format == "quotes" and config.data.path is None
    assert config.peft.method == "lora"
    assert config.distributed.strategy == "single"
    assert config.resolved_output_dir() == Path("runs/tiny-llama-quotes-lora")


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "train:\n  lr: 1.0e-4\n  micro_batch_size: 2\n  batch_size: 8\npeft:\n  lora:\n    r: 4\n"
    )
    config = load_config(
        path, parse_overrides(["--train.lr", "3e-4", "--peft.lora.target_modules", "q_proj,v_proj"])
    )
    assert config.train.lr == pytest.approx(3e-4)  # override wins over the file
    assert config.train.micro_batch_size == 2 and config.train.batch_size == 8  # file kept
    assert config.peft.lora.r == 4
    assert config.peft.lora.target_modules == ["q_proj", "v_proj"]


def test_yaml_style_list_and_all_linear():
    config = build_config({}, parse_overrides(["--peft.lora.target_modules", "[q_proj,v_proj]"]))
    assert config.peft.lora.target_modules == ["q_proj", "v_proj"]
    config = build_config({}, {"peft.lora.target_modules": "all-linear"})
    assert config.peft.lora.target_modules == "all-linear"


def test_output_dir_derived_from_model_format_method():
    config = build_config({}, {"model.name": "/models/Llama-2-7b-hf/", "peft.method": "none"})
    assert config.resolved_output_dir() == Path("runs/Llama-2-7b-hf-quotes-none")
    assert build_config({}, {"output_dir": "out/x"}).resolved_output_dir() == Path("out/x")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("peft.lora.rank", "peft.lora.r"),
        ("lora.rank", "peft.lora.r"),
        ("lr", "train.lr"),
        ("train.learning_rate", "train.lr"),
        ("train.max_step", "train.max_steps"),
        ("data.cutoff_len", "data.max_seq_len"),
        ("model.nmae", "model.name"),
    ],
)
def test_unknown_key_suggestions(key, expected):
    assert suggest_key(key) == expected
    assert problems_of(overrides={key: 1}) == [f"unknown key '{key}' - did you mean '{expected}'?"]


def test_wrong_type_names_field_and_value():
    (problem,) = problems_of(overrides={"train.max_steps": "abc"})
    assert problem.startswith("train.max_steps: ") and "'abc'" in problem
    (problem,) = problems_of(overrides={"train.epochs": 1.5})
    assert problem.startswith("train.epochs: ") and "1.5" in problem
    (problem,) = problems_of(overrides={"peft.method": "lora2"})
    assert "peft.method" in problem and "'lora'" in problem and "'none'" in problem


def test_several_errors_reported_at_once():
    problems = problems_of(
        {"train": {"lr": "fast", "warmup_ratio": 2}, "peft": {"lora": {"rank": 8}}},
        {"data.format": "quote", "model.trust_remote_code": "maybe"},
    )
    assert len(problems) == 5, problems
    joined = " | ".join(problems)
    for fragment in (
        "train.lr:",
        "train.warmup_ratio:",
        "unknown key 'peft.lora.rank' - did you mean 'peft.lora.r'?",
        "data.format: unknown format 'quote' - did you mean 'quotes'?",
        "model.trust_remote_code:",
    ):
        assert fragment in joined


def test_batch_size_must_divide():
    (problem,) = problems_of(overrides={"train.batch_size": 10, "train.micro_batch_size": 4})
    assert "train.batch_size (10)" in problem and "train.micro_batch_size (4)" in problem
    assert "--train.batch_size 8" in problem


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (0.0, True), (0.2, True), (30, True), (1.0, False), (1.5, False), (-1, False)],
)
def test_val_set_size_count_or_fraction(value, ok):
    if ok:
        assert build_config({}, {"data.val_set_size": value}).data.val_set_size == value
    else:
        (problem,) = problems_of(overrides={"data.val_set_size": value})
        assert problem.startswith("data.val_set_size:")


def test_override_into_a_value_is_an_error():
    problems = problems_of(overrides={"output_dir.x": 1})
    assert any("'output_dir' is a value, not a section" in p for p in problems)


def test_overrides_are_read_by_field_type():
    tokens = [
        "--train.lr=2e-4",
        "--train.seed", "7",
        "--train.progress",
        "--peft.lora.r", "8",
        "--data.path", "data #1.jsonl",  # YAML would drop the text after '#'
        "--generation.prompt", "Note: the",  # YAML would read a mapping
        "--output_dir", "2024",  # YAML would read a number
        "--model.revision", "0123",
        "--peft.lora.target_modules", "[q_proj,v_proj]",
    ]  # fmt: skip
    config = build_config({}, parse_overrides(tokens))
    assert config.train.lr == pytest.approx(2e-4) and config.train.seed == 7 and config.train.progress is True
    assert config.peft.lora.r == 8
    assert config.data.path == "data #1.jsonl"
    assert config.generation.prompt == "Note: the"
    assert config.output_dir == "2024" and config.model.revision == "0123"
    assert config.peft.lora.target_modules == ["q_proj", "v_proj"]
    assert (
        build_config({"data": {"path": "x.jsonl"}}, parse_overrides(["--data.path", "null"])).data.path
        is None
    )
    assert build_config({}, parse_overrides(["--generation.prompt", "no"])).generation.prompt == "no"
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        parse_overrides(["stray"])


def test_negative_numbers_are_values_not_flags():
    (problem,) = problems_of(overrides=parse_overrides(["--train.seed", "-1"]))
    assert problem == "train.seed: Input should be greater than or equal to 0 (got -1)"


def test_odd_values_are_errors():
    problems = problems_of(
        overrides={"train.lr": "inf", "peft.lora.alpha": float("nan"), "model.name": "", "train.seed": 2**32}
    )
    assert len(problems) == 4
    assert any(p.startswith("train.lr: Input should be a finite number") for p in problems)
    assert any(p.startswith("peft.lora.alpha: Input should be") and "nan" in p for p in problems)
    assert any(p.startswith("model.name: String should have at least 1 character") for p in problems)
    assert any(p.startswith("train.seed: Input should be less than 4294967296") for p in problems)
    assert problems_of({1: 2}) == ["unknown key '1'"]


def test_a_mistyped_flag_is_an_unknown_key():
    assert problems_of(overrides=parse_overrides(["--train.progres"])) == [
        "unknown key 'train.progres' - did you mean 'train.progress'?"
    ]


def test_empty_sections_and_section_overrides_merge():
    # `train:` with everything under it commented out is an empty section, not an error.
    config = build_config({"train": None}, parse_overrides(["--train.lr", "1e-4"]))
    assert config.train.lr == pytest.approx(1e-4)
    # A whole-section override merges into the file's section instead of dropping its other keys.
    config = build_config({"train": {"lr": 1e-4, "epochs": 2}}, parse_overrides(["--train", "{lr: 2.0e-4}"]))
    assert (config.train.lr, config.train.epochs) == (pytest.approx(2e-4), 2)


def test_a_forgotten_value_is_an_error_not_true():
    problems = problems_of(overrides=parse_overrides(["--train.lr", "--data.val_set_size"]))
    assert problems == [
        "--train.lr needs a value (e.g. --train.lr VALUE)",
        "--data.val_set_size needs a value (e.g. --data.val_set_size VALUE)",
    ]
    (problem,) = problems_of(overrides=parse_overrides(["--train.epochs", "true"]))
    assert problem == "train.epochs: expected a number, not true/false (got True)"
    (problem,) = problems_of({"train": {"lr": True}})
    assert problem.startswith("train.lr: expected a number")


def test_full_finetuning_keeps_fp32_master_weights():
    (problem,) = problems_of(overrides={"peft.method": "none", "model.dtype": "bfloat16"})
    assert "model.dtype bfloat16 with peft.method none" in problem and "train.precision bf16" in problem
    assert build_config({}, {"peft.method": "lora", "model.dtype": "bfloat16"}).model.dtype == "bfloat16"


def test_yaml_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*missing.yaml' not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' is not valid YAML at line \d+, column \d+"):
        load_config(bad)
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match="config file '.*folder' is a folder"):
        load_config(tmp_path / "folder")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfetrain: 1")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(binary)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, not list"):
        load_config(listing)


def test_resolved_config_round_trips(tmp_path):
    config = build_config({}, {"train.lr": 5e-4, "peft.lora.target_modules": "q_proj,v_proj"})
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_every_shipped_config_validates():
    configs = sorted((ROOT / "configs").rglob("*.yaml"))
    assert configs, "configs/ holds no recipe"
    for path in configs:
        assert isinstance(load_config(path), Config), path


# ---- the CLI: one line on stderr, exit status 2, no traceback --------------------------------------


def test_cli_validate_ok_and_bad(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  max_steps: 3\n")
    assert main(["validate", str(good)]) == 0
    assert "OK" in capsys.readouterr().out

    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stepz: 3\n  lr: x\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llmft: error: 2 config errors in ")
    assert "did you mean 'train.max_steps'?" in err and "train.lr:" in err
    assert "Traceback" not in err


def test_cli_print_config(capsys):
    assert main(["finetune", "--print-config", "--train.lr", "2e-4", "--output_dir", "x/y"]) == 0
    printed = capsys.readouterr().out
    config = build_config(yaml.safe_load(printed))
    assert config.train.lr == pytest.approx(2e-4) and config.output_dir == "x/y"


def test_cli_flag_typo_names_the_flag(capsys):
    assert main(["finetune", "--print-config", "--overwrit"]) == 2
    assert (
        capsys.readouterr().err == "llmft: error: unknown flag '--overwrit' - did you mean '--overwrite'?\n"
    )


def test_cli_help_shows_plain_types(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert "--data.val_set_size int | float (default 0.1)" in text
    assert "--train.max_steps int | null (default None)" in text
    assert "Annotated" not in text and "BeforeValidator" not in text


def test_cli_unknown_flag_is_one_line(capsys):
    assert main(["finetune", "--trian.lr", "1", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == "llmft: error: config error: unknown key 'trian.lr' - did you mean 'train.lr'?\n"


def test_quotes_recipe_is_the_defaults_written_out():
    recipe = load_config(ROOT / "configs" / "quotes_lora.yaml")
    assert recipe.model_copy(update={"output_dir": None}) == Config()


def test_a_malformed_list_flag_is_an_error_not_one_pattern():
    # YAML reads `\.` inside double quotes as an unknown escape; read as text instead, the value became
    # one regular expression (a character class) that matched every parameter: the whole model trained.
    tokens = ["--peft.method", "none", "--freeze.strategy", "patterns", "--freeze.include"]
    problems = problems_of(overrides=parse_overrides([*tokens, '["layers\\.3\\.", "lm_head"]']))
    assert problems[0].startswith(
        '--freeze.include \'["layers\\\\.3\\\\.", "lm_head"]\' is not a valid YAML list or mapping '
        "(found unknown escape character"
    )
    assert "--freeze.include '[layers\\.3\\., lm_head]'" in problems[0]
    assert problems_of(overrides=parse_overrides(["--train", "{lr: [}"]))[0].startswith(
        "--train '{lr: [}' is not a valid YAML list or mapping"
    )
    # The forms the message suggests both work.
    for value in ["[layers\\.3\\., lm_head]", "['layers\\.3\\.', 'lm_head']"]:
        config = build_config({}, parse_overrides([*tokens, value]))
        assert config.freeze.include == ["layers\\.3\\.", "lm_head"]


def test_a_repeated_flag_adds_up_for_a_list_and_the_last_wins_otherwise():
    tokens = ["--peft.method", "none", "--freeze.strategy", "patterns"]
    repeated = [
        "--freeze.include",
        "layers\\.3\\.",
        "--freeze.include=[lm_head, norm]",
        "--freeze.exclude",
        "mlp",
    ]
    config = build_config({"freeze": {"include": ["embed"]}}, parse_overrides([*tokens, *repeated]))
    assert config.freeze.include == ["layers\\.3\\.", "lm_head", "norm"]  # the flags replace the file's list
    assert config.freeze.exclude == ["mlp"]
    # Comma lists add up item by item too.
    lora = ["--peft.lora.target_modules", "q_proj,v_proj", "--peft.lora.target_modules", "k_proj"]
    assert build_config({}, parse_overrides(lora)).peft.lora.target_modules == ["q_proj", "v_proj", "k_proj"]
    overrides = parse_overrides(["--train.lr", "1e-4", "--train.seed", "3", "--train.lr=2e-4"])
    assert build_config({}, overrides).train.lr == pytest.approx(2e-4)  # argparse's rule: the last wins


# ---- data.format names: checked at load, without importing llmft.data ------------------------------


def test_format_names_are_the_registered_formats():
    from llmft.data.formats import known_formats
    from llmft.format_names import BUILTIN_FORMATS

    assert sorted(BUILTIN_FORMATS) == known_formats()


def test_config_checks_format_names_without_importing_data():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from llmft.config import build_config\n"
        "from llmft.errors import ConfigError\n"
        "try:\n"
        "    build_config({}, {'data.format': 'alpacca'})\n"
        "except ConfigError as exc:\n"
        "    print(exc.problems[0])\n"
        "print(sorted(m for m in sys.modules if m.startswith('llmft.data')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    problem, data_modules = result.stdout.splitlines()
    assert problem == (
        "data.format: unknown format 'alpacca' - did you mean 'alpaca'? (known: alpaca, chat, "
        "classification, grammar, quotes, text; or your own as module:function)"
    )
    assert data_modules == "[]"


# ---- rules across fields: every problem at once; dependent defaults filled by one resolve step -----


def test_independent_cross_field_problems_are_reported_together():
    problems = problems_of(
        overrides={
            "peft.method": "prefix",
            "data.batching": "packing",  # virtual tokens and packing
            "model.quant_type": "fp4",  # a 4-bit setting without a 4-bit base
            "freeze.train_norms": True,  # a freeze setting without its strategy
        }
    )
    assert len(problems) == 3, problems
    assert problems[0].startswith("freeze.train_norms / train_embeddings apply to strategies bottom")
    assert problems[1].startswith("model.quant_type apply to model.quantization 4bit (now none)")
    assert problems[2].startswith("peft.method prefix puts its virtual tokens before every row")


def test_every_problem_of_one_rule_is_reported():
    # torchao's NF4 (the FSDP 4-bit base) refuses fp4, double_quant false and DoRA: all three at once.
    settings = {"model.quant_type": "fp4", "model.double_quant": False, "peft.lora.use_dora": True}
    problems = problems_of(overrides={"peft.method": "qlora", "distributed.strategy": "fsdp", **settings})
    assert [p.split(" with torchao")[0].split(" on torchao")[0] for p in problems] == [
        "model.quant_type fp4",
        "model.double_quant false",
        "peft.lora.use_dora",
    ]


def test_cli_reports_several_cross_field_problems_on_one_line(tmp_path, capsys):
    recipe = tmp_path / "two.yaml"
    recipe.write_text("peft:\n  method: none\nmodel:\n  dtype: bfloat16\ntask: classification\n")
    assert main(["validate", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llmft: error: 2 config errors in ")
    assert "(1) model.dtype bfloat16 with peft.method none" in err
    assert "(2) task classification reads text and label records" in err


def test_a_wrong_field_does_not_hide_another_sections_rule():
    problems = problems_of(overrides={"train.lr": "fast", "peft.method": "none", "freeze.strategy": "bottom"})
    assert len(problems) == 2, problems
    assert problems[0].startswith("train.lr: Input should be a valid number")
    assert problems[1].startswith("freeze.strategy bottom needs exactly one of freeze.num_frozen_layers")


@pytest.mark.parametrize(
    ("settings", "quantization", "backend"),
    [
        ({"peft.method": "qlora"}, "4bit", "bitsandbytes"),
        ({"peft.method": "qlora", "distributed.strategy": "ddp"}, "4bit", "bitsandbytes"),
        ({"peft.method": "qlora", "distributed.strategy": "fsdp"}, "4bit", "torchao"),
        ({"model.quantization": "4bit", "distributed.strategy": "fsdp"}, "4bit", "torchao"),
        # The user's own values are kept.
        ({"peft.method": "qlora", "model.quantization": "8bit"}, "8bit", "auto"),
        ({"peft.method": "qlora", "model.quant_backend": "torchao"}, "4bit", "torchao"),
        ({"peft.method": "lora"}, "none", "auto"),
    ],
)
def test_resolve_fills_the_defaults_that_depend_on_other_fields(settings, quantization, backend):
    config = build_config({}, settings)
    assert (config.model.quantization, config.model.quant_backend) == (quantization, backend)
    # Filled values are not the user's: model_fields_set still says what the config gave.
    given = {key.split(".", 1)[1] for key in settings if key.startswith("model.")}
    assert config.model.model_fields_set == given


def test_resolve_is_one_step_that_leaves_its_input_alone():
    from llmft.config import resolve_defaults

    raw = Config.model_validate({"peft": {"method": "qlora"}, "distributed": {"strategy": "fsdp"}})
    assert (raw.model.quantization, raw.model.quant_backend) == ("none", "auto")  # pydantic fills nothing
    resolved = resolve_defaults(raw)
    assert (resolved.model.quantization, resolved.model.quant_backend) == ("4bit", "torchao")
    assert (raw.model.quantization, raw.model.quant_backend) == ("none", "auto")
    assert resolve_defaults(resolved) == resolved
    # The written run config names the backend, so a reload rebuilds the same 4-bit base.
    assert build_config(yaml.safe_load(resolved.to_yaml())) == resolved
