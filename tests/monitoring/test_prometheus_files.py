"""The example Prometheus files in etc/prometheus: valid, and the alerts fire when they should.

``promtool test rules`` evaluates the alert rules over made-up series with the
names and labels the daemon exports (tests/monitoring checks those names on
/metrics), so a rule that can never fire, or fires on a healthy server, fails.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml
from helpers.requirements import unavailable

ETC = Path(__file__).resolve().parent.parent.parent / "etc" / "prometheus"
INSTANCE = {"job": "chasquid", "instance": "127.0.0.1:1099"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool (Debian package prometheus) is not installed")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120)


def test_config_and_rules_are_valid() -> None:
    result = promtool("check", "config", str(ETC / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    result = promtool("check", "rules", str(ETC / "chasquid-alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {**INSTANCE, **labels}
    inside = ",".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{inside}}}", "values": values}


def firing(alert: str, at: str, *labels: dict[str, str], **annotations: str) -> dict[str, object]:
    return {
        "eval_time": at,
        "alertname": alert,
        "exp_alerts": [
            {"exp_labels": label_set, "exp_annotations": annotations} for label_set in labels
        ],
    }


def quiet(alert: str, at: str) -> dict[str, object]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def run_cases(tmp_path: Path, cases: list[dict[str, object]]) -> None:
    tests = {
        "rule_files": [str(ETC / "chasquid-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", **case} for case in cases],
    }
    path = tmp_path / "tests.yml"
    path.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


WARNING = {"severity": "warning", "instance": INSTANCE["instance"]}


def test_queue_growing(tmp_path: Path) -> None:
    run_cases(
        tmp_path,
        [
            {
                # 10 items, one more a minute: past 50 after 40 min, 60 more than an hour ago.
                "input_series": [series("chasquid_queue_length", "10+1x180")],
                "alert_rule_test": [
                    quiet("ChasquidQueueGrowing", "30m"),
                    firing(
                        "ChasquidQueueGrowing",
                        "150m",
                        {**WARNING, "job": "chasquid"},
                        summary="chasquid's queue on 127.0.0.1:1099 keeps growing (160 items)",
                        description="See /debug/queue for the items and their last errors.",
                    ),
                ],
            },
            {
                # A large queue that does not grow (a big mailing sent out slowly).
                "input_series": [series("chasquid_queue_length", "200x180")],
                "alert_rule_test": [quiet("ChasquidQueueGrowing", "150m")],
            },
        ],
    )


def test_delivery_failures_rising(tmp_path: Path) -> None:
    run_cases(
        tmp_path,
        [
            {
                "input_series": [
                    series("chasquid_queue_deliveryResults", "0+10x60", result="sent"),
                    series("chasquid_queue_deliveryResults", "0+5x60", result="temporary"),
                ],
                "alert_rule_test": [
                    firing(
                        "ChasquidDeliveryFailuresRising",
                        "40m",
                        WARNING,
                        summary="33.33% of deliveries from 127.0.0.1:1099 fail",
                        description=(
                            "See the errors of Queue.SendLoop and Courier.* on /debug/traces."
                        ),
                    )
                ],
            },
            {
                "input_series": [
                    series("chasquid_queue_deliveryResults", "0+100x60", result="sent"),
                    series("chasquid_queue_deliveryResults", "0+1x60", result="permanent"),
                ],
                "alert_rule_test": [quiet("ChasquidDeliveryFailuresRising", "40m")],
            },
        ],
    )


def test_tls_downgrade_refused(tmp_path: Path) -> None:
    summary = "chasquid on 127.0.0.1:1099 refused a TLS downgrade"
    run_cases(
        tmp_path,
        [
            {
                "input_series": [
                    series("chasquid_smtpOut_securityLevelChecks", "5+1x30", result="pass"),
                    series("chasquid_smtpOut_securityLevelChecks", "0x10 1x20", result="fail"),
                ],
                "alert_rule_test": [
                    quiet("ChasquidTLSDowngradeRefused", "5m"),
                    firing("ChasquidTLSDowngradeRefused", "15m", WARNING, summary=summary),
                ],
            },
            {
                "input_series": [
                    series("chasquid_smtpIn_securityLevelChecks", "0x10 2x20", result="fail"),
                ],
                "alert_rule_test": [
                    firing("ChasquidTLSDowngradeRefused", "15m", WARNING, summary=summary)
                ],
            },
            {
                "input_series": [
                    series("chasquid_smtpOut_sts_security", "0x10 1x20", result="fail"),
                    series("chasquid_smtpOut_sts_security", "0+1x30", result="pass"),
                ],
                "alert_rule_test": [
                    firing("ChasquidTLSDowngradeRefused", "15m", WARNING, summary=summary)
                ],
            },
            {
                "input_series": [
                    series("chasquid_smtpOut_securityLevelChecks", "0+3x30", result="pass"),
                    series("chasquid_smtpIn_securityLevelChecks", "0+3x30", result="pass"),
                ],
                "alert_rule_test": [quiet("ChasquidTLSDowngradeRefused", "20m")],
            },
        ],
    )


def test_auth_failures_spiking(tmp_path: Path) -> None:
    run_cases(
        tmp_path,
        [
            {
                "input_series": [
                    series("chasquid_smtpIn_responseCodeCount", "0+10x30", code="535"),
                    series("chasquid_smtpIn_responseCodeCount", "0+100x30", code="250"),
                ],
                "alert_rule_test": [
                    quiet("ChasquidAuthFailuresSpiking", "5m"),
                    firing(
                        "ChasquidAuthFailuresSpiking",
                        "15m",
                        {**WARNING, "job": "chasquid", "code": "535"},
                        summary="10 failed logins per minute on 127.0.0.1:1099",
                    ),
                ],
            },
            {
                # A user who mistypes a password now and then.
                "input_series": [
                    series("chasquid_smtpIn_responseCodeCount", "0+0.1x60", code="535")
                ],
                "alert_rule_test": [quiet("ChasquidAuthFailuresSpiking", "50m")],
            },
        ],
    )


def test_down(tmp_path: Path) -> None:
    run_cases(
        tmp_path,
        [
            {
                "input_series": [series("up", "1x5 0x20")],
                "alert_rule_test": [
                    quiet("ChasquidDown", "5m"),
                    firing(
                        "ChasquidDown",
                        "15m",
                        {"severity": "critical", **INSTANCE},
                        summary="chasquid on 127.0.0.1:1099 does not answer its monitoring server",
                    ),
                ],
            }
        ],
    )
