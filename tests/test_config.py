"""One typed config tree: strict loading, dotted overrides, file < overrides, and a TOML that reloads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from seq2seq.config import RANGES, SECTIONS, Config, ModelConfig, TrainConfig, from_dict, parse_override, resolve, to_dict, to_toml
from seq2seq.errors import ConfigError


def custom_config() -> Config:
    """A config that differs from the defaults in every section, with strings that need escaping."""
    base = Config()
    return dataclasses.replace(
        base,
        data=dataclasses.replace(base.data, source='data/ünïcode "quoted" \\ path.txt', target="t.gz", max_length=50),
        tokenizer=dataclasses.replace(base.tokenizer, vocab_size=300, model_type="bpe", joint=False),
        model=dataclasses.replace(base.model, hidden_dim=64, attention="luong-general", input_feeding=False, layer_dropout=0.0),
        train=dataclasses.replace(base.train, lr=3e-4, max_time=1.5, seed=7),
        search=dataclasses.replace(base.search, beam_size=3, length_penalty=0.6, length_norm=True),
    )


def test_dict_round_trip_gives_the_same_config() -> None:
    config = custom_config()
    assert from_dict(to_dict(config)) == config


def test_missing_sections_and_keys_take_the_defaults() -> None:
    assert from_dict({}) == Config()
    assert from_dict({"model": {"layers": 2}}).model == ModelConfig(layers=2)


def test_unknown_key_error_names_the_dotted_path() -> None:
    with pytest.raises(ConfigError, match=r"model\.hiden_dim"):
        from_dict({"model": {"hiden_dim": 128}})


def test_unknown_section_is_refused() -> None:
    with pytest.raises(ConfigError, match="modle"):
        from_dict({"modle": {"hidden_dim": 128}})


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("model", "hidden_dim", "256"),      # a string where an int belongs
        ("model", "hidden_dim", 256.0),      # a float where an int belongs
        ("model", "hidden_dim", True),       # a bool is not an int here
        ("model", "input_feeding", 1),       # an int is not a bool
        ("train", "lr", "fast"),
        ("data", "source", 3),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_setting(section: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        from_dict({section: {key: value}})


def test_an_int_is_accepted_where_a_float_is_expected() -> None:
    lr = from_dict({"train": {"lr": 1}}).train.lr
    assert lr == 1.0 and isinstance(lr, float)


def test_out_of_range_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="hidden_dim must be even"):
        from_dict({"model": {"hidden_dim": 33}})
    with pytest.raises(ConfigError, match="attention"):
        from_dict({"model": {"attention": "transformer"}})
    with pytest.raises(ConfigError, match="train.device must be auto, cpu or cuda"):
        from_dict({"train": {"device": "gpu"}})


def test_override_values_are_read_as_toml_literals_or_bare_words() -> None:
    assert parse_override("model.hidden_dim=256") == ("model.hidden_dim", 256)
    assert type(parse_override("model.hidden_dim=256")[1]) is int
    assert parse_override("model.attention=luong-dot") == ("model.attention", "luong-dot")
    assert parse_override("model.input_feeding=false") == ("model.input_feeding", False)
    assert parse_override("train.lr=0.0005") == ("train.lr", 0.0005)
    assert parse_override('data.source="a b.txt"') == ("data.source", "a b.txt")


@pytest.mark.parametrize("text", ["hidden_dim=256", "model.hidden_dim", "a.b.c=1"])
def test_a_malformed_override_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override(text)


def test_overrides_win_over_the_file_which_wins_over_the_defaults(tmp_path: Path) -> None:
    file = tmp_path / "run.toml"
    file.write_text('[model]\nhidden_dim = 128\nemb_dim = 64\n\n[data]\nsource = "train.src"\n', encoding="utf-8")

    config = resolve(file, dict([parse_override("model.hidden_dim=256")]))

    assert config.model.hidden_dim == 256            # override over file
    assert config.model.emb_dim == 64                # file over default
    assert config.data.source == "train.src"
    assert config.model.layers == ModelConfig().layers  # default where nobody says otherwise


def test_an_unknown_override_is_refused_naming_the_dotted_path() -> None:
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        resolve(None, {"train.learning_rate": 0.1})


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        resolve(tmp_path / "absent.toml")


def test_an_invalid_toml_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "broken.toml"
    file.write_text("[model\nhidden_dim = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(file))}: not valid TOML"):
        resolve(file)


def test_to_toml_output_reloads_to_the_same_config(tmp_path: Path) -> None:
    config = custom_config()  # data.valid_source and friends stay None: written as comments
    file = tmp_path / "config.toml"
    file.write_text(to_toml(config), encoding="utf-8")

    assert resolve(file) == config


def test_to_toml_of_the_defaults_reloads_to_the_defaults(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_text(to_toml(Config()), encoding="utf-8")
    assert resolve(file) == Config()


def _numeric_settings() -> list[str]:
    return [f"{section}.{field.name}" for section in SECTIONS for field in dataclasses.fields(getattr(Config(), section))
            if field.type in ("int", "float")]


def test_every_numeric_setting_has_a_range() -> None:
    assert sorted(_numeric_settings()) == sorted(RANGES)


@pytest.mark.parametrize("name", sorted(RANGES))
def test_a_value_just_outside_each_range_is_refused_naming_the_setting(name: str) -> None:
    allowed = RANGES[name]
    integer = isinstance(dataclasses.asdict(Config())[name.split(".")[0]][name.split(".")[1]], int)
    step = 1 if integer else 1e-9
    outside = [allowed.low if allowed.above else allowed.low - step]
    if allowed.high != float("inf"):
        outside.append(allowed.high if allowed.below else allowed.high + step)
    inside = allowed.low + step if allowed.above else allowed.low
    for value in outside:
        with pytest.raises(ConfigError, match=rf"^{re.escape(name)} must be .*, got {re.escape(repr(value))}$"):
            resolve(overrides={name: value})
    if name not in ("model.hidden_dim", "search.beam_size"):  # 1 is odd for a bidirectional encoder; the rest hold
        resolve(overrides={name: inside})


def test_the_command_line_refuses_a_negative_step_count_with_exit_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["train", "--max-steps", "-1", "--output", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: train.max_steps must be at least 0, got -1"


def test_the_adaptation_settings_are_in_the_printed_config_off_by_default() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["train", "--print-config", "--set", "train.accumulate=4"])
    assert result.exit_code == 0, result.output
    # the embedded CMUdict recipe averages its weights and feeds no attentional vector back; the settings' own
    # defaults are the other way round
    for line in ("sampling_alpha = 0.0", "# init_from = (unset)", "accumulate = 4", "ema_decay = 0.999",
                 "input_feeding = false"):
        assert line in result.stdout.splitlines()
    assert TrainConfig().ema_decay == 0.0 and ModelConfig().input_feeding


RECIPES = sorted((Path(__file__).parent.parent / "data" / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.name for path in RECIPES])
def test_every_shipped_recipe_loads_strictly_and_names_itself_in_its_command(recipe: Path) -> None:
    config = resolve(recipe)  # refuses unknown keys, wrong types and values out of range
    assert config != Config()
    named = re.findall(r"--config (\S+\.toml)", recipe.read_text(encoding="utf-8"))
    assert all(path == f"data/recipes/{recipe.name}" for path in named), named


def test_the_recipes_folder_holds_the_default_and_the_longer_runs() -> None:
    assert {"cmudict.toml", "cmudict-90min.toml", "multi30k.toml", "multi30k-15min.toml"} <= {path.name for path in RECIPES}
