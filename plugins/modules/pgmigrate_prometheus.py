#!/usr/bin/python
# The migration in Prometheus (issue 15): `publish` renders figures in Prometheus' text
# exposition format and pushes them to a Pushgateway (PUT, one group per job and instance)
# and/or writes them as a node_exporter textfile (atomically: node_exporter never reads half a
# file); `query` reads the application's own signals with PromQL instant queries (module_utils/
# pgmigrate_monitor.prometheus_query, which the throttle shares). A query that
# fails or returns no sample gives value None and the reason, never a healthy figure. Changes
# no database.
from __future__ import annotations

DOCUMENTATION = r"""
module: pgmigrate_prometheus
short_description: Publish the migration's figures to Prometheus (Pushgateway, textfile) and read PromQL
version_added: 1.0.0
author: Agency platform team (@agency)
description:
  - C(publish) renders I(metrics) (name to number, or to a list of C({labels, value})) as gauges
    named C(pgmigrate_<name>), labelled with I(labels), in Prometheus' text exposition format, and
    sends them to I(pushgateway_url) (PUT, one group per job and instance) and writes them to
    I(textfile_dir) (atomically, for node_exporter's textfile collector) when set. A failing push
    is reported in C(failed), never fatal.
  - C(query) runs each PromQL instant query of I(queries) against I(prometheus_url); each reading is
    C({value, error, query}) and C(value) is null when the query failed or returned nothing - never
    a healthy figure.
  - Changes no database; never reports a change.
options:
  action:
    description: Publish figures, or read PromQL.
    type: str
    required: true
    choices: [publish, query]
  metrics:
    description: C(publish) - metric name to a number, or to a list of C({labels, value}).
    type: dict
    default: {}
  labels:
    description: C(publish) - labels of every gauge (host, database, environment).
    type: dict
    default: {}
  job:
    description: C(publish) - the Pushgateway job.
    type: str
    default: pgmigrate
  instance:
    description: C(publish) - the Pushgateway instance; empty - none.
    type: str
    default: ""
  pushgateway_url:
    description: C(publish) - the Pushgateway's base URL; empty - no push.
    type: str
    default: ""
  textfile_dir:
    description: C(publish) - node_exporter's textfile directory; unset - no file.
    type: path
  textfile_name:
    description: C(publish) - the file's name; empty - C(<job>_<instance>.prom).
    type: str
    default: ""
  prometheus_url:
    description: C(query) - the Prometheus server's base URL.
    type: str
    default: ""
  queries:
    description: C(query) - reading name to PromQL expression.
    type: dict
    default: {}
  timeout_s:
    description: Seconds each HTTP request may take.
    type: float
    default: 5
"""

EXAMPLES = r"""
- name: Publish the phase's figures to the Pushgateway
  agency.pgmigrate.pgmigrate_prometheus:
    action: publish
    metrics:
      phase_duration_seconds: 3.2
      rows_linked: 1000000
    labels: {host: db1, database: app, environment: staging}
    pushgateway_url: http://pushgateway.example.internal:9091

- name: Read the application's p95 and error rate
  agency.pgmigrate.pgmigrate_prometheus:
    action: query
    prometheus_url: http://prometheus.example.internal:9090
    queries:
      p95_ms: histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[5m])) by (le)) * 1000
  register: app_signals
"""

RETURN = r"""
samples:
  description: C(publish) - gauges rendered.
  returned: action is publish
  type: int
exposition:
  description: C(publish) - the text exposition sent.
  returned: action is publish
  type: str
sent:
  description: C(publish) - destination (C(pushgateway), C(textfile)) to outcome.
  returned: action is publish
  type: dict
failed:
  description: C(publish) - destination to why it failed.
  returned: action is publish
  type: dict
readings:
  description: C(query) - reading name to C({value, error, query}).
  returned: action is query
  type: dict
  sample: {p95_ms: {value: 41.5, error: null, query: "..."}}
"""

import os
import re
import urllib.error
import urllib.parse

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
from ansible.module_utils.urls import open_url
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import finite_number as _number
from ansible_collections.agency.pgmigrate.plugins.module_utils.pgmigrate_monitor import prometheus_query as query

_NAME = re.compile(r"[^a-zA-Z0-9_]")


def metric_name(name: str) -> str:
    return "pgmigrate_" + _NAME.sub("_", name).strip("_")


def _label_value(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{_NAME.sub("_", str(k))}="{_label_value(v)}"' for k, v in sorted(labels.items())) + "}"


def exposition(metrics: dict, labels: dict) -> tuple[str, int]:
    """The text exposition format (version 0.0.4): one gauge per metric, # HELP and # TYPE once."""
    lines, count = [], 0
    for name in sorted(metrics):
        value = metrics[name]
        series = value if isinstance(value, list) else [{"labels": {}, "value": value}]
        samples = [(s.get("labels") or {}, _number(s.get("value"))) for s in series if isinstance(s, dict)]
        samples = [(lab, num) for lab, num in samples if num is not None]
        if not samples:
            continue
        full = metric_name(name)
        lines += [f"# HELP {full} pgmigrate: {name.replace(chr(10), ' ')}", f"# TYPE {full} gauge"]
        for extra, number in samples:
            lines.append(f"{full}{_labels({**labels, **extra})} {number:g}")
            count += 1
    return "\n".join(lines) + "\n", count


def push(url: str, job: str, instance: str, text: str, timeout_s: float) -> str:
    """PUT replaces this job's and instance's group on the Pushgateway: the latest figures only."""
    path = f"/metrics/job/{urllib.parse.quote(job, safe='')}"
    if instance:
        path += f"/instance/{urllib.parse.quote(instance, safe='')}"
    try:
        with open_url(url.rstrip("/") + path, data=text.encode(), method="PUT", http_agent="pgmigrate",
                      headers={"Content-Type": "text/plain; version=0.0.4"}, timeout=timeout_s) as response:
            return f"ok ({response.status})"
    except urllib.error.HTTPError as exc:
        return f"failed: HTTP {exc.code} {exc.read()[:200].decode(errors='replace').strip()}"
    except (urllib.error.URLError, OSError, UrlsConnectionError) as exc:
        return f"failed: {getattr(exc, 'reason', exc)}"


def write_textfile(directory: str, name: str, text: str) -> str:
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    tmp = f"{path}.{os.getpid()}.tmp"  # node_exporter reads *.prom only
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            action=dict(type="str", required=True, choices=["publish", "query"]),
            metrics=dict(type="dict", default={}),
            labels=dict(type="dict", default={}),
            job=dict(type="str", default="pgmigrate"),
            instance=dict(type="str", default=""),
            pushgateway_url=dict(type="str", default=""),
            textfile_dir=dict(type="path"),
            textfile_name=dict(type="str", default=""),
            prometheus_url=dict(type="str", default=""),
            queries=dict(type="dict", default={}),
            timeout_s=dict(type="float", default=5),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["action"] == "query":
        if not p["prometheus_url"]:
            module.fail_json(msg="action=query needs prometheus_url (migration_prometheus_url)")
        readings = {name: query(p["prometheus_url"], str(expr), p["timeout_s"]) for name, expr in p["queries"].items()}
        module.exit_json(changed=False, readings=readings)
    text, count = exposition(p["metrics"], p["labels"])
    result: dict = {"changed": False, "samples": count, "exposition": text, "sent": {}, "failed": {}}
    if module.check_mode:
        module.exit_json(**result, msg="check mode: nothing pushed or written")
    if p["pushgateway_url"]:
        outcome = push(p["pushgateway_url"], p["job"], p["instance"], text, p["timeout_s"])
        (result["sent"] if outcome.startswith("ok") else result["failed"])["pushgateway"] = outcome
    if p["textfile_dir"]:
        name = p["textfile_name"] or f"{_NAME.sub('_', p['job'])}_{_NAME.sub('_', p['instance'] or 'all')}.prom"
        try:
            result["sent"]["textfile"] = write_textfile(p["textfile_dir"], name, text)
        except OSError as exc:
            result["failed"]["textfile"] = f"failed: {exc.strerror or exc} ({p['textfile_dir']})"
    if result["failed"]:
        failed = "; ".join(f"{k} {v}" for k, v in result["failed"].items())
        result["msg"] = f"Prometheus output not delivered: {failed}. The run goes on."
    module.exit_json(**result)


if __name__ == "__main__":
    main()
