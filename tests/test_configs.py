"""Config loading: one typed object from JSON/TOML plus CLI overrides; errors name the key."""
import pytest

from components.errors import UserInputError
from pipeline import configs


def test_toml_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('schema_path = "s.pbtxt"\n[example_gen]\ntext_key = "sentence"\n'
                    'eval_ratio = 0\nmax_text_bytes = 100\n')
    config = configs.load_config(str(path), {"pipeline_root": "r", "inputs": ("a.csv",),
                                             "until": None})
    assert config.example_gen.text_key == "sentence"
    assert config.example_gen.eval_ratio == 0.0
    assert config.example_gen.max_text_bytes == 100
    assert config.schema_path == "s.pbtxt" and config.pipeline_root == "r"
    assert config.inputs == ("a.csv",) and config.until == configs.STAGES[-1]


@pytest.mark.parametrize("values, match", [
    ({"example_gen": {"label_column": "y"}}, "example_gen.label_column"),
    ({"example_gen": {"max_text_bytes": "big"}}, "max_text_bytes"),
    ({"example_gen": {"require_label": 1}}, "require_label"),
    ({"example_gen": {"eval_ratio": 1.5}}, "eval_ratio"),
    ({"example_gen": {"input_format": "xml"}}, "input_format"),
    ({"allow_anomalies": "yes"}, "allow_anomalies"),
])
def test_bad_values_are_named(tmp_path, values, match):
    import json

    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(UserInputError, match=match):
        configs.load_config(str(path), {})


def test_unparseable_file_is_a_usage_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[example_gen\n")
    with pytest.raises(UserInputError, match="c.toml"):
        configs.load_config(str(path), {})
