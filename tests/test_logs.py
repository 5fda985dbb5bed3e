"""Structured logs (asmg/logs.py): ``--log-format json`` gives one JSON object per line with the context fields
(period, model version, ...) where they apply. The workers' JSON logs are checked end to end in
tests/test_metrics_prometheus.py."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
from dataclasses import replace
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from asmg import logs


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level, bound = list(root.handlers), root.level, dict(logs._bound)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs._bound.clear()
    logs._bound.update(bound)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_context_extra_and_exceptions(restore_logging) -> None:
    out = io.StringIO()
    version = {"v": 3}
    logs.configure("info", "json", stream=out, role="trainer")
    logs.bind(model_version=lambda: version["v"])
    log = logging.getLogger("asmg.test")
    with logs.log_context(period=7):
        log.info("published %s", "x", extra={"auc": 0.71, "nan": float("nan")})
        version["v"] = 4
        with logs.log_context(method="iu"):
            log.warning("inner")
    log.debug("dropped: below the level")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    first, inner, failed = _lines(out)
    assert first["message"] == "published x" and first["level"] == "info" and first["logger"] == "asmg.test"
    assert (first["role"], first["period"], first["model_version"], first["auc"]) == ("trainer", 7, 3, 0.71)
    assert first["nan"] is None and first["ts"].endswith("+00:00")
    assert (inner["period"], inner["method"], inner["model_version"]) == (7, "iu", 4)
    assert "period" not in failed and "RuntimeError: boom" in failed["exc"]


def test_extra_beats_context_and_context_follows_to_thread(restore_logging) -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    log = logging.getLogger("asmg.test")

    async def main() -> None:
        with logs.log_context(period=5):
            await asyncio.to_thread(log.info, "in a thread")
            log.info("explicit", extra={"period": 6})

    asyncio.run(main())
    assert [(line["message"], line["period"]) for line in _lines(out)] == [("in a thread", 5), ("explicit", 6)]


def test_dict_config_for_faust_workers(restore_logging, capsys) -> None:
    logging.config.dictConfig(logs.dict_config("warning", "json"))
    logs.bind(role="windowing")
    logging.getLogger("faust.worker").warning("ready")
    logging.getLogger("faust.worker").info("hidden")
    line = json.loads(capsys.readouterr().err.strip())
    assert (line["message"], line["role"], line["level"]) == ("ready", "windowing", "warning")


def test_text_format_and_bad_values(restore_logging) -> None:
    out = io.StringIO()
    logs.configure("info", "text", stream=out)
    logging.getLogger("asmg.test").info("plain")
    assert out.getvalue().rstrip().endswith("INFO asmg.test: plain")
    with pytest.raises(ValueError, match="log format"):
        logs.check_format("xml")
    with pytest.raises(ValueError, match="log level"):
        logs.level_number("loud")


def test_settings_and_commands_take_the_log_format() -> None:
    from asmg_cli.main import app
    from streams.wire.settings import SettingsError, StreamSettings

    assert StreamSettings.from_env({"ASMG_LOG_FORMAT": "json", "ASMG_METRICS_PORT": "9100"}).metrics_port == 9100
    with pytest.raises(SettingsError, match="ASMG_LOG_FORMAT"):
        StreamSettings(log_format="xml")
    with pytest.raises(SettingsError, match="ASMG_METRICS_PORT"):
        StreamSettings(metrics_port=70000)
    command = typer.main.get_command(app)
    for path in (["worker", "windowing"], ["worker", "trainer"], ["worker", "scorer"], ["experiment"]):
        leaf = command
        for name in path:
            leaf = leaf.commands[name]
        envvars = {p.envvar for p in leaf.params}
        assert "ASMG_LOG_FORMAT" in envvars, path
    result = CliRunner().invoke(app, ["experiment", "--log-format", "xml"])
    assert result.exit_code != 0 and "log format" in result.output


def test_experiment_logs_each_period_as_json(restore_logging) -> None:
    from asmg.config import ProtocolConfig
    from asmg.experiment import ExperimentSpec, run_method
    from asmg.prepare import prepare_periods
    from asmg.presets import preset
    from tests.helpers import tiny_log

    protocol = ProtocolConfig(n_periods=5, pretrain_periods=2, first_test_period=4)
    cfg, _ = preset("authors")
    cfg = replace(cfg, device="cpu", protocol=protocol, train=replace(cfg.train, pretrain_epochs=1, batch_size=256))
    data = prepare_periods(tiny_log(n_events=1500), protocol)
    out = io.StringIO()
    logs.configure("info", "json", stream=out, role="experiment")
    run_method("iu", 0, data, ExperimentSpec("tiny", ["iu"], [0], cfg))
    lines = [line for line in _lines(out) if line["logger"] == "asmg.experiment"]
    periods = [line for line in lines if "auc" in line]
    assert [line["period"] for line in periods] == [3, 4, 5]
    assert all(line["method"] == "iu" and line["seed"] == 0 and line["role"] == "experiment" for line in periods)
    assert "update" in periods[0]["seconds"] and lines[-1]["mean_auc"] > 0


def test_native_stderr_lines_become_json_objects() -> None:
    """librdkafka prints some lines straight to file descriptor 2; with JSON logs they are wrapped too."""
    import subprocess
    import sys

    assert json.loads(logs.native_line('{"a": 1}')) == {"a": 1}
    wrapped = json.loads(logs.native_line("%4|1795958640.036|GETPID|asmg#producer-1| [thrd:main]: retrying\n"))
    assert (wrapped["level"], wrapped["logger"], wrapped["message"]) == ("warning", "librdkafka.GETPID",
                                                                         "[thrd:main]: retrying")
    script = ("import logging, os\n"
              "from asmg import logs\n"
              "logs.configure('info', 'json', role='windowing')\n"
              "logs.wrap_native_stderr()\n"
              "logging.getLogger('x').info('before')\n"
              "os.write(2, b'%6|1.0|BGQUEUE|asmg#producer-4| [thrd:background]: Purging 1 unserved events\\n')\n"
              "os.write(2, b'plain native text\\n')\n"
              "logging.getLogger('x').warning('after')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]  # every line is JSON
    assert [x["message"] for x in lines] == ["before", "[thrd:background]: Purging 1 unserved events",
                                             "plain native text", "after"]
    assert lines[1]["role"] == "windowing" and lines[1]["logger"] == "librdkafka.BGQUEUE"
