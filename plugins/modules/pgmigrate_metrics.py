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
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - C(sample) takes one sample, compares it with the previous one of this run (rates) and with the
    pre-migration baseline (degradation), and returns the alerts. It never fails on a metric.
  - C(sampler) loops until I(workdir)/sampler-<phase>.stop exists or I(deadline_s) passes, sampling
    every I(interval_s) and sending a status every I(notify_interval_s); run it with C(async) and
    C(poll 0), stop it by creating the stop file (or a C(sample) with I(stop_sampler)), collect
    it with async_status.
  - Every sample is appended to I(workdir)/samples.jsonl and every alert to I(workdir)/alerts.jsonl,
    which the run's report reads. Read-only for the database.
options:
  action:
    description: One sample now, or the background sampler.
    type: str
    required: true
    choices: [sample, sampler]
  workdir:
    description: The run's monitoring directory (samples, alerts, the sampler's stop and done files).
    type: path
    required: true
  phase:
    description: The phase the sample belongs to.
    type: str
    default: ""
  kind:
    description: C(sample) - what the sample is (C(baseline), C(before), C(after)), recorded with it.
    type: str
    default: sample
  baseline:
    description: The pre-migration baseline sample, for the degradation alerts and abort criteria.
    type: dict
  thresholds:
    description:
      - Alert thresholds over the defaults - C(p95_ms) (2000), C(error_rate_pct) (1),
        C(event_lag_s) (300), C(pool_utilisation_pct) (85), C(error_rate_min_xacts) (1000).
    type: dict
    default: {}
  abort:
    description: >-
      Abort criteria over the defaults - C(degradation_pct) (50) against the baseline, above
      C(min_delta_ms) (20).
    type: dict
    default: {}
  probe_sql:
    description: >-
      The read-only probe query whose p95 is the performance measured; default - the migration's
      probe (I(monitor)'s C(probe)), else no probe (its p95 is 0, never alerted on).
    type: str
  migration_dir:
    description: The migration's directory; the files I(monitor) names are relative to it.
    type: path
  monitor:
    description:
      - The migration's monitoring, its manifest's C(monitor) section (docs/writing-a-migration.md).
        Empty - no probe, no event lag, no integrity checks.
      - C(probe) - a SQL file, the read-only probe query (when I(probe_sql) is not given).
      - C(event_lag) - C(table), C(column), C(file) - a SQL file returning one value, the event
        processing lag in seconds, read where the column exists (alerted over the C(event_lag_s)
        threshold).
      - C(integrity) - a list of C(name), C(table), optional C(column), C(file) (a SQL file returning
        a count of violations, read where the table and column exist), and optional
        C(guaranteed_by) (C(column), C(references) - a validated foreign key that makes the check
        needless, so it is not run). A count over 0 is an abort criterion.
    type: dict
    default: {}
  probe_runs:
    description: How many times the probe runs per sample (at least 1).
    type: int
    default: 10
  probe_timeout_ms:
    description: The probe's statement_timeout, in milliseconds.
    type: int
    default: 5000
  interval_s:
    description: C(sampler) - seconds between two samples.
    type: float
    default: 10
  notify_interval_s:
    description: C(sampler) - seconds between two status notifications.
    type: float
    default: 1800
  deadline_s:
    description: C(sampler) - the longest the sampler runs, in seconds.
    type: float
    default: 21600
  notify_log:
    description: C(sampler) - the run's notification log (see M(agency.pgmigrate.pgmigrate_notify)).
    type: path
  webhook_url:
    description: C(sampler) - the JSON webhook of its notifications (C(no_log)).
    type: str
  webhook_timeout_s:
    description: C(sampler) - seconds a webhook delivery may take.
    type: float
    default: 5
  context:
    description: C(sampler) - the run's context sent with its notifications.
    type: dict
    default: {}
  stop_sampler:
    description: >-
      C(sample) - first stop the phase's background sampler and return what it saw
      (C(sampler_result)).
    type: bool
    default: false
  sampler_job_file:
    type: path
    description: The sampler's async job file (its start task's results_file), removed once final.
extends_documentation_fragment:
  - agency.pgmigrate.connection
  - agency.pgmigrate.lock
"""

EXAMPLES = r"""
- name: Sample before phase 3
  agency.pgmigrate.pgmigrate_metrics:
    action: sample
    workdir: reports/monitor-run1
    phase: "3"
    kind: before
    baseline: "{{ monitoring_baseline.sample }}"
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  register: monitoring_before

- name: Sample in the background while phase 3 runs
  agency.pgmigrate.pgmigrate_metrics:
    action: sampler
    workdir: reports/monitor-run1
    phase: "3"
    interval_s: 10
    notify_log: reports/notifications.jsonl
    db_host: db.example.internal
    db_name: app
    db_user: migrator
  async: 21600
  poll: 0
  register: monitoring_sampler
"""

RETURN = r"""
sample:
  description: C(sample) - the sample (probe latency, connections, rates, lag), as recorded.
  returned: action is sample
  type: dict
alerts:
  description: The alerts raised, each with C(metric), C(severity), C(message) and C(abort).
  returned: always
  type: list
  elements: dict
abort:
  description: C(sample) - the alerts that meet the abort criteria.
  returned: action is sample
  type: list
  elements: dict
summary:
  description: C(sample) - the sample in one line.
  returned: action is sample
  type: str
sampler_stopped:
  description: C(sample) - whether the background sampler was stopped (null when not asked).
  returned: action is sample
  type: bool
sampler_result:
  description: C(sample) - what the stopped sampler returned.
  returned: action is sample
  type: dict
sampler_job_removed:
  description: C(sample) - whether I(sampler_job_file) was removed.
  returned: action is sample
  type: bool
samples:
  description: C(sampler) - samples taken.
  returned: action is sampler
  type: int
notifications:
  description: C(sampler) - the notifications sent.
  returned: action is sampler
  type: list
  elements: dict
seconds:
  description: C(sampler) - how long it ran.
  returned: action is sampler
  type: float
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate import (
    CONNECTION_ARGS,
    LOCK_ARGS,
    MigrationError,
)
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
            # The integrity counts scan tables: they are taken before and after each phase
            # (the go/no-go before the next), not at every interval of a long one.
            raw, metrics, alerts, record = sampler.once("sample", previous, with_integrity=False)
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
            migration_dir=dict(type="path"),
            monitor=dict(type="dict", default={}),
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
    except MigrationError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
