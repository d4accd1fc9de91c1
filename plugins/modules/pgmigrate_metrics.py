#!/usr/bin/python
# Monitoring samples (strategy 2.1, 4.2, 5.1). `sample` takes one sample now (the hooks before and
# after every phase); `sampler` runs in the background (async, poll 0) while a long phase runs,
# sampling every interval_s and sending a status every notify_interval_s, until the stop file
# appears or deadline_s passes. Every sample is appended to <workdir>/samples.jsonl and every alert
# to <workdir>/alerts.jsonl, which the run's report reads. Read-only for the database.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_metrics
short_description: Sample the database's health, raise the strategy's alerts
description:
  - C(sample) takes one sample, compares it with the previous one of this run (rates) and with the
    pre-migration baseline (degradation), and returns the alerts. It never fails on a metric.
  - C(sampler) loops until I(workdir)/sampler-<phase>.stop exists or I(deadline_s) passes; run it
    with C(async) and C(poll 0), stop it by creating the stop file, collect it with async_status.
options:
  action: {type: str, required: true, choices: [sample, sampler]}
  workdir: {type: path, required: true}
  phase: {type: str, default: ""}
  kind: {type: str, default: sample}
  baseline: {type: dict}
  thresholds: {type: dict, default: {}}
  abort: {type: dict, default: {}}
  probe_sql: {type: str}
  probe_runs: {type: int, default: 10}
  probe_timeout_ms: {type: int, default: 5000}
  interval_s: {type: float, default: 10}
  notify_interval_s: {type: float, default: 1800}
  deadline_s: {type: float, default: 21600}
  notify_log: {type: path}
  webhook_url: {type: str}
  webhook_timeout_s: {type: float, default: 5}
  context: {type: dict, default: {}}
  stop_sampler: {type: bool, default: false}
  sampler_job_file:
    type: path
    description: The sampler's async job file (its start task's results_file), removed once final.
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import CONNECTION_ARGS, LOCK_ARGS
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import (
    Sampler,
    sample_once,
    save_json,
    summary_line,
)
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_notify import deliver, message


def do_sample(module: AnsibleModule) -> dict:
    return sample_once(module.params)


def do_sampler(module: AnsibleModule) -> dict:
    p = module.params
    sampler = Sampler(p)
    stop_file = os.path.join(p["workdir"], f"sampler-{p['phase']}.stop")
    started = time.monotonic()
    last_status = started
    previous: dict | None = None
    raised: set[str] = set()
    alerts_all: list[dict] = []
    sent: list[dict] = []
    count = 0
    context = {**p["context"], "phase": p["phase"]}

    def notify(event: str, text: str, severity: str, details: dict) -> None:
        payload = message(event, text, context, severity, details)
        channels = deliver(payload, p["notify_log"] or "", p["webhook_url"] or "", p["webhook_timeout_s"])
        sent.append({"event": event, "at": payload["at"], "channels": channels})

    try:
        while True:
            raw, metrics, alerts, record = sampler.once("sample", previous)
            count += 1
            if raw:
                previous = raw
                now_raised = {a["metric"] for a in alerts}
                for alert in alerts:
                    if alert["metric"] not in raised:  # once per metric while it stays raised
                        alerts_all.append(alert)
                        notify("alert", f"ALERT during phase {p['phase']}: {alert['message']}",
                               alert["severity"], {"alert": alert})
                raised = now_raised
            if time.monotonic() - last_status >= p["notify_interval_s"]:
                last_status = time.monotonic()
                minutes = (last_status - started) / 60.0
                what = summary_line(raw, metrics) if raw else record.get("error", "no sample")
                notify("status", f"phase {p['phase']} running for {minutes:.0f} min: {what}", "info",
                       {"sample": record})
            deadline = time.monotonic() + p["interval_s"]
            while time.monotonic() < deadline:
                if os.path.exists(stop_file) or time.monotonic() - started > p["deadline_s"]:
                    return {"changed": False, "samples": count, "alerts": alerts_all,
                            "notifications": sent, "seconds": round(time.monotonic() - started, 1)}
                time.sleep(0.1)
    finally:
        sampler.close()
        # The done file carries the result: the after-phase sample that stopped the sampler
        # returns it (sampler_result).
        save_json(os.path.join(p["workdir"], f"sampler-{p['phase']}.done"),
              {"samples": count, "alerts": alerts_all, "notifications": sent,
               "seconds": round(time.monotonic() - started, 1)})


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["sample", "sampler"]),
            workdir=dict(type="path", required=True),
            phase=dict(type="str", default=""),
            kind=dict(type="str", default="sample"),
            baseline=dict(type="dict"),
            thresholds=dict(type="dict", default={}),
            abort=dict(type="dict", default={}),
            probe_sql=dict(type="str"),
            probe_runs=dict(type="int", default=10),
            probe_timeout_ms=dict(type="int", default=5000),
            interval_s=dict(type="float", default=10),
            notify_interval_s=dict(type="float", default=1800),
            deadline_s=dict(type="float", default=21600),
            notify_log=dict(type="path"),
            webhook_url=dict(type="str", no_log=True),
            webhook_timeout_s=dict(type="float", default=5),
            context=dict(type="dict", default={}),
            stop_sampler=dict(type="bool", default=False),
            sampler_job_file=dict(type="path"),
            **CONNECTION_ARGS,
            **LOCK_ARGS,
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["interval_s"] <= 0 or p["notify_interval_s"] <= 0 or p["probe_runs"] < 1:
        module.fail_json(msg="interval_s and notify_interval_s must be positive and probe_runs at least 1 "
                             "(migration_monitor_* variables)")
    try:
        result = do_sample(module) if p["action"] == "sample" else do_sampler(module)
    except OSError as exc:
        module.fail_json(msg=f"cannot write monitoring files under {p['workdir']}: {exc.strerror or exc} "
                             "(check migration_report_dir)")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
