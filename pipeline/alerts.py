"""Alerts when an unattended run ends: a JSON body to a shell command and/or a webhook.

A nightly run from cron or a scheduler tells nobody when it fails unless someone reads cron's
mail (TFX issue #4084). The config's `[alerts]` table names where to send a run's ending and
which endings to send:

    [alerts]
    webhook = "https://hooks.slack.com/services/T000/B000/XXXX"  # POSTed, application/json
    command = "mail -s 'textcnn retraining' ml-oncall@example.com"  # body on stdin and in
                                                                 # $TEXTCNN_ALERT
    on = ["failure", "anomalies"]                                # the default
    timeout_seconds = 10

`api.run` builds the body (`payload_for`) and sends it (`notify`) however the run ends. An
alert that cannot be sent is a warning on the progress logger: it never raises and never
changes the run's exit code (the run's record, not its alert, is what the exit code reports).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from components import PROGRESS_LOGGER
from components.errors import UserInputError

# The endings that alert (`on`). A run has one main outcome, and may have another too (a
# pushed run whose data anomalies were accepted is "anomalies" and "pushed").
FAILURE, ANOMALIES, NOT_BLESSED, PUSHED = OUTCOMES = (
    "failure", "anomalies", "not_blessed", "pushed")
ENV_VAR = "TEXTCNN_ALERT"  # the command's copy of the body
SCHEMA = 1  # the body's `schema`: raised when a field changes meaning or goes
MAX_MESSAGE_CHARS = 4000  # the error text in a body (an environment variable has a limit)
MAX_ANOMALIES = 20


@dataclasses.dataclass(frozen=True)
class AlertSettings:
    """Where a run's ending is sent, and which endings. Neither `command` nor `webhook`: none."""

    command: Optional[str] = None  # run with sh; the JSON body on stdin and in $TEXTCNN_ALERT
    webhook: Optional[str] = None  # an http(s) URL the JSON body is POSTed to
    on: tuple = (FAILURE, ANOMALIES)  # a subset of OUTCOMES
    timeout_seconds: float = 10.0  # for the command and for the webhook, each

    def __post_init__(self):
        on = (self.on,) if isinstance(self.on, str) else tuple(self.on)
        unknown = [o for o in on if o not in OUTCOMES]
        if unknown:
            raise UserInputError(
                f"alerts.on: unknown outcome {', '.join(map(repr, unknown))}; the outcomes are "
                f"{', '.join(OUTCOMES)}")
        object.__setattr__(self, "on", on)
        if self.command is not None and not (isinstance(self.command, str)
                                             and self.command.strip()):
            raise UserInputError(f"alerts.command must be a shell command; got {self.command!r}")
        if self.webhook is not None:
            given = self.webhook if isinstance(self.webhook, str) else str(self.webhook)
            url = urllib.parse.urlsplit(given)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise UserInputError(  # shown without its path: a webhook's path is its secret
                    f"alerts.webhook must be an http:// or https:// URL with a host; got "
                    f"{redact_url(given)!r}")
        timeout = self.timeout_seconds
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise UserInputError(f"alerts.timeout_seconds must be a number of seconds > 0; got "
                                 f"{timeout!r}")

    @property
    def configured(self) -> bool:
        return bool(self.command or self.webhook)

    def wants(self, payload: Dict[str, Any]) -> bool:
        """Whether a body is sent: something is configured and one of its outcomes is in `on`."""
        outcomes = payload.get("outcomes") or [payload.get("outcome")]
        return self.configured and any(o in self.on for o in outcomes)


def redact_url(url: str) -> str:
    """A URL as records and messages show it: scheme and host (a webhook's path is its secret,
    as Slack's is)."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:  # not a URL: its first part only
        return url.split("/")[0] + ("/..." if "/" in url else "")
    rest = "/..." if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{rest}"


def recorded(settings: AlertSettings) -> Dict[str, Any]:
    """The settings as a run's record keeps them (summary.json, the store, a pushed version's
    metadata.json): the webhook's path left out."""
    values = dataclasses.asdict(settings)
    if settings.webhook:
        values["webhook"] = redact_url(settings.webhook)
    return values


def outcomes_of(exit_code: int, anomalies: bool, pushed: bool) -> List[str]:
    """A run's outcomes, the main one first: the exit code's (1 or 2 failure, 3 anomalies,
    4 not blessed); for exit 0, anomalies (found, and accepted or only warned about) before
    pushed; also anomalies after the main one when the run ended otherwise. Empty: a run with
    nothing to tell (nothing new, or stopped by --until before the Pusher)."""
    main = {0: None, 3: ANOMALIES, 4: NOT_BLESSED}.get(exit_code, FAILURE)
    found = [main] if main else []
    if anomalies and ANOMALIES not in found:
        found.append(ANOMALIES)
    if exit_code == 0 and pushed:
        found.append(PUSHED)
    return found


def payload_for(result, config) -> Dict[str, Any]:
    """The body of the alert for a recorded run (`api.RunResult`) of `config`."""
    from pipeline import configs, results

    details = results.stage_results(result.summary)
    # What this invocation did: not what it reused, nor (a run made stage by stage) what an
    # earlier invocation did, which alerted then.
    executed = {s.name for s in result.stages if s.status != "reused" and not s.kept}
    validation = details.get(configs.EXAMPLE_VALIDATOR) or results.ExampleValidatorResult()
    # This run's validation only: a reused one was alerted on by the run that executed it.
    found = _anomaly_lines(validation) if configs.EXAMPLE_VALIDATOR in executed else []
    push = details.get(configs.PUSHER)
    pushed = (push if configs.PUSHER in executed and push is not None and push.pushed
              and result.exit_code == 0 else None)
    failed = next((s for s in result.stages if s.status == "failed"), None)
    outcomes = outcomes_of(result.exit_code, bool(found), pushed is not None)
    if result.error:
        message = result.error
    elif pushed is not None:
        message = f"pushed version {pushed.version}: {pushed.path}"
    else:
        message = result.status
    if found and result.exit_code == 0:
        message = (f"{len(found)} data anomal{'y' if len(found) == 1 else 'ies'} "
                   f"{'accepted (--allow-anomalies)' if validation.allowed else 'warned about'}"
                   f"; {message}")
    return _body(config, run_id=result.run_id, status=result.status,
                 exit_code=result.exit_code, outcomes=outcomes,
                 failing_stage=failed.name if failed else None, message=message,
                 anomalies=found, report_path=result.report_path,
                 summary_path=result.summary_path,
                 pushed_version=pushed.version if pushed else None,
                 pushed_path=pushed.path if pushed else None)


def failure_payload(config, message: str, run_id: Optional[str] = None, exit_code: int = 1,
                    status: str = "not started", failing_stage: Optional[str] = None
                    ) -> Dict[str, Any]:
    """The body of a "failure" alert for a run with no record to read: one that could not start
    (another run holds the root), or a scheduler's task that died before or around `api.run`
    (say, an Airflow `on_failure_callback`). Send it with `notify` or `api.send_alert`."""
    return _body(config, run_id=run_id, status=status, exit_code=exit_code,
                 outcomes=[FAILURE], failing_stage=failing_stage, message=message, anomalies=[],
                 report_path=None, summary_path=None, pushed_version=None, pushed_path=None)


def _anomaly_lines(validation) -> List[str]:
    return ([m for split in sorted(validation.anomalies) for m in validation.anomalies[split]]
            + list((validation.drift or {}).get("messages") or []))


def _body(config, *, run_id, status, exit_code, outcomes, failing_stage, message, anomalies,
          report_path, summary_path, pushed_version, pushed_path) -> Dict[str, Any]:
    """Every field, always present (null when it does not apply): the schema README documents."""
    from pipeline import configs

    outcome = outcomes[0] if outcomes else None
    message = str(message or "")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + " [...]"
    host = socket.gethostname()
    first_line = message.splitlines()[0] if message else ""
    text = (f"{configs.PIPELINE_NAME} run {run_id or '(none)'} on {host}: "
            f"{(outcome or 'no alert').replace('_', ' ')} (exit {exit_code}"
            f"{f', stage {failing_stage}' if failing_stage else ''}): {first_line[:300]}")
    return {
        "schema": SCHEMA,
        "text": text,  # one line, for chat webhooks (Slack, Mattermost read `text`)
        "pipeline": configs.PIPELINE_NAME,
        "run_id": run_id,
        "status": status,
        "exit_code": exit_code,
        "outcome": outcome,
        "outcomes": list(outcomes),
        "failing_stage": failing_stage,
        "message": message,
        "anomalies": list(anomalies)[:MAX_ANOMALIES],
        "report_path": report_path,
        "summary_path": summary_path,
        "pushed_version": pushed_version,
        "pushed_path": pushed_path,
        "pipeline_root": config.pipeline_root,
        "host": host,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def notify(settings: AlertSettings, payload: Dict[str, Any]) -> List[str]:
    """Sends `payload` to the command and the webhook `settings` name (both, when both are set)
    if one of its outcomes is in `settings.on`. Returns the problems (empty: sent, or nothing
    to send); each is also a warning on the progress logger. Never raises."""
    if not settings.wants(payload):
        return []
    log = logging.getLogger(PROGRESS_LOGGER)
    body = json.dumps(payload, sort_keys=True, default=str)
    problems = []
    for target, send, where in ((settings.command, _run_command, "command"),
                                (settings.webhook, _post, "webhook")):
        if not target:
            continue
        try:
            problem = send(target, body, settings.timeout_seconds)
        except Exception as e:  # noqa: BLE001  (an alert never fails the run)
            problem = f"{type(e).__name__}: {e}"
        shown = redact_url(target) if where == "webhook" else "command"
        if problem:
            problems.append(f"the {payload.get('outcome')} alert to the {where} was not sent "
                            f"({shown}): {problem}")
            log.warning("warning: %s", problems[-1])
        else:
            log.info("alert sent (%s) to the %s", payload.get("outcome"),
                     f"webhook {shown}" if where == "webhook" else "command")
    return problems


def _post(url: str, body: str, timeout: float) -> Optional[str]:
    """POSTs the body; None when the server answered 2xx, else what went wrong."""
    request = urllib.request.Request(url, data=body.encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        return f"{e.reason}"
    except (OSError, ValueError) as e:  # a timeout reading the answer, a bad URL
        return f"{type(e).__name__}: {e}"
    return None if 200 <= status < 300 else f"HTTP {status}"


def _run_command(command: str, body: str, timeout: float) -> Optional[str]:
    """Runs the command with sh, the body on stdin and in $TEXTCNN_ALERT; None when it exits 0.

    It gets its own process group, so a timeout kills what it started too (a `curl` under
    the shell would otherwise hold its output open)."""
    env = dict(os.environ, **{ENV_VAR: body})
    process = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    try:
        output, _ = process.communicate(body.encode("utf-8"), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return f"timed out after {timeout:g}s (killed)"
    if process.returncode != 0:
        said = output.decode("utf-8", "replace").strip()[-500:]
        return f"exit {process.returncode}" + (f": {said}" if said else "")
    return None

