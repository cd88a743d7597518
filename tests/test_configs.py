"""Config loading: one typed object from JSON/TOML plus CLI overrides; errors name the key."""
import os
import re

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


def test_metadata_dir_defaults_to_a_local_root_and_is_required_for_a_url_root(tmp_path):
    root = str(tmp_path / "root")
    assert configs.metadata_dir_for(root) == root
    assert configs.metadata_dir_for("gs://bucket/root", str(tmp_path / "m")) == str(tmp_path / "m")
    with pytest.raises(UserInputError, match="--metadata-dir"):
        configs.metadata_dir_for("gs://bucket/root")
    with pytest.raises(UserInputError, match="must be a local path"):
        configs.metadata_dir_for("gs://bucket/root", "gs://bucket/metadata")
    absolute = configs.with_absolute_paths(configs.PipelineConfig(
        pipeline_root="gs://bucket/root", inputs=("gs://bucket/in/*.csv", "local.csv"),
        metadata_dir="meta", pusher=configs.PusherSettings(serving_dir="s3://b/serving")))
    assert absolute.pipeline_root == "gs://bucket/root"  # URLs are not made into local paths
    assert absolute.inputs == ("gs://bucket/in/*.csv", os.path.abspath("local.csv"))
    assert absolute.pusher.serving_dir == "s3://b/serving"
    assert absolute.metadata_dir == os.path.abspath("meta")


def test_a_url_root_without_metadata_dir_exits_2(tmp_path):
    from conftest import run_cli

    proc = run_cli("run", "--input", str(tmp_path / "q.csv"), "--pipeline-root",
                   "gs://bucket/root", timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--metadata-dir" in proc.stderr and "gs://bucket/root" in proc.stderr
    runs = run_cli("runs", "gs://bucket/root", timeout=300)
    assert runs.returncode == 2 and "--metadata-dir" in runs.stderr


def test_direct_runner_mode_follows_the_input_size_unless_the_user_names_one():
    from apache_beam.options.pipeline_options import DirectOptions

    from pipeline.pipeline import IN_MEMORY_MAX_BYTES, beam_options, full_beam_args

    def mode(args, data_bytes):
        options = beam_options(args, data_bytes).view_as(DirectOptions)
        return options.direct_running_mode, options.direct_num_workers

    cores = os.cpu_count() or 1
    assert mode([], 1000) == ("in_memory", 1)
    assert mode([], IN_MEMORY_MAX_BYTES) == ("in_memory", 1)
    assert mode([], IN_MEMORY_MAX_BYTES + 1) == ("multi_processing", cores)
    assert mode([], None) == ("multi_processing", cores)  # size unknown
    # A mode the user names gets its own worker count; the user's count wins over that.
    assert mode(["--direct_running_mode=multi_processing"], 1000) == ("multi_processing", cores)
    assert mode(["--direct_running_mode", "in_memory"], None) == ("in_memory", 1)
    assert mode(["--direct_running_mode=multi_processing", "--direct_num_workers=3"],
                1000) == ("multi_processing", 3)
    args = full_beam_args(["--direct_num_workers=2"], 10)
    assert args[-1] == "--direct_num_workers=2" and "--direct_running_mode=in_memory" in args


def test_the_score_table_sets_every_scoring_setting_and_flags_win(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[score]\nformats = ["csv", "parquet"]\nbatch_size = 64\n'
                    'rows_per_shard = 500\nstatistics = false\nskew_blocking = true\n'
                    'skew_text_length_jsd = 0.2\n')
    score = configs.load_config(str(path), {}).score
    assert (score.formats, score.batch_size, score.rows_per_shard, score.statistics,
            score.skew_blocking, score.skew_text_length_jsd) == (
        ("csv", "parquet"), 64, 500, False, True, 0.2)
    flags = configs.load_config(str(path), {"score": {"formats": ["jsonl"], "batch_size": None,
                                                      "rows_per_shard": 7}}).score
    assert (flags.formats, flags.batch_size, flags.rows_per_shard) == (("jsonl",), 64, 7)
    assert configs.load_config(None, {}).score.formats == ("jsonl",)


@pytest.mark.parametrize("section, table, match", [
    ("score", 'formats = ["xml"]', "score.formats must be one or more of jsonl, csv, parquet"),
    ("score", 'formats = ["csv", "csv"]', "each once"),
    ("score", "formats = []", "got none"),
    ("score", "batch_size = 0", "score.batch_size must be a whole number >= 1"),
    ("score", "rows_per_shard = 2.5", "score.rows_per_shard"),
    ("score", "skew_label_linf = -0.1", "skew_label_linf must be a number >= 0"),
    ("score", "shards = 3", "unknown config key 'score.shards'"),
    # [alerts] (pipeline/alerts.py; tests/test_alerts.py sends them)
    ("alerts", 'on = ["failure", "crashed", "blessed"]',
     "alerts.on: unknown outcome 'crashed', 'blessed'; the outcomes are failure, anomalies, "
     "not_blessed, pushed"),
    ("alerts", 'webhook = "ftp://example.com/hook"',
     "alerts.webhook must be an http:// or https:// URL with a host; got 'ftp://example.com/...'"),
    ("alerts", 'webhook = "hooks.slack.com/services/x"', "got 'hooks.slack.com/...'"),
    ("alerts", "webhook = 3", "config key 'alerts.webhook' must be str"),
    ("alerts", 'command = " "', "alerts.command must be a shell command"),
    ("alerts", "timeout_seconds = 0", "alerts.timeout_seconds must be a number of seconds > 0"),
    ("alerts", 'timeout_seconds = "10"', "alerts.timeout_seconds' must be float"),
    ("alerts", 'email = "x@example.com"', "unknown config key 'alerts.email'"),
])
def test_bad_table_settings_are_named(tmp_path, section, table, match):
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{table}\n")
    with pytest.raises(UserInputError, match=re.escape(match)):
        configs.load_config(str(path), {})
