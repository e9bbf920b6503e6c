#!/usr/bin/env python3
"""Asserts the interop tier's check results, read back through the collector's JSON API
(`/api/v1/hosts/{id}` → `checks`) and `/metrics`, never from the agent's own output.

Run by tests/interop/run inside the client namespace, after one `estate-agent once`. Only the
kinds given with --kinds are asserted (the others are not built yet and `run` says so). Exits 1
if any assertion failed. Assertions that could not be made (the collector does not expose
something yet) are written to --not-run-file, one `what: why` per line, for run's summary.
"""

import argparse
import json
import sys
import urllib.request


class Tally:
    def __init__(self):
        self.passed = []
        self.failed = []
        self.not_run = []

    def ok(self, what):
        self.passed.append(what)
        print(f"  PASS     {what}")

    def fail(self, what, why):
        self.failed.append(f"{what}: {why}")
        print(f"  FAIL     {what}: {why}")

    def check(self, condition, what, why):
        if condition:
            self.ok(what)
        else:
            self.fail(what, why)

    def skip(self, what, why):
        self.not_run.append(f"{what}: {why}")
        print(f"  NOT RUN  {what}: {why}")


def get(api, path):
    with urllib.request.urlopen(api + path, timeout=10) as answer:
        return answer.read().decode()


def measurements(result):
    """name → value (or text when the measurement is textual)."""
    found = {}
    for item in result.get("measurements") or []:
        value = item.get("value")
        text = item.get("text")
        found[item.get("name")] = text if text else value
    return found


def describe(result):
    named = ", ".join(f"{k}={v}" for k, v in sorted(measurements(result).items()))
    reason = f" ({result.get('reason')})" if result.get("reason") else ""
    return (f"{result.get('check')} [{result.get('kind')}] {result.get('target')}: "
            f"{result.get('outcome')}{reason}  {named}")


# --- expectations per kind -----------------------------------------------------------------
# Each is (check name, kind, description, function(results, args) → error text or None).
# `results` are the API's results for that check name (one per target).


def all_pass_with(*names):
    """Every target passed, and each named measurement is there and positive."""

    def verify(results, _args):
        for result in results:
            if result.get("outcome") != "pass":
                return f"{result.get('target')}: {result.get('outcome')} ({result.get('reason')})"
            values = measurements(result)
            for name in names:
                value = values.get(name)
                if not isinstance(value, (int, float)) or value <= 0:
                    return f"{result.get('target')}: measurement {name} is {value!r}, want > 0"
        return None

    return verify


def fails_with_reason(*words):
    def verify(results, _args):
        for result in results:
            if result.get("outcome") != "fail":
                return f"{result.get('target')}: {result.get('outcome')}, want fail"
            reason = (result.get("reason") or "").lower()
            if not reason or not any(word in reason for word in words):
                return f"{result.get('target')}: reason {reason!r} names none of {words}"
        return None

    return verify


EXPECTATIONS = [
    ("dc-ldap", "tcp", "TCP to the DC's LDAP port (host + port)", all_pass_with("connect_seconds")),
    ("dc-ldaps", "tcp", "TCP to the DC's LDAPS port", all_pass_with("connect_seconds")),
    ("dc-kerberos-tcp", "tcp", "TCP to the DC's KDC", all_pass_with("connect_seconds")),
    ("dc-dns-tcp", "tcp", "TCP to the DC's DNS", all_pass_with("connect_seconds")),
    ("dc-by-name", "tcp", "the DC by name, resolved through Samba's DNS",
     all_pass_with("connect_seconds")),
    ("dnsmasq-dns-tcp", "tcp", "TCP to dnsmasq's DNS", all_pass_with("connect_seconds")),
    ("closed-port", "tcp", "a closed port fails with the refusal as reason",
     fails_with_reason("refused")),
]


def assert_checks(tally, checks, kinds, args):
    by_name = {}
    for result in checks:
        by_name.setdefault(result.get("check"), []).append(result)
    print("check results as the collector's API returns them:")
    for result in checks:
        print("  " + describe(result))
    print("assertions:")
    expected_names = set()
    for name, kind, what, verify in EXPECTATIONS:
        if kind not in kinds:
            continue
        expected_names.add(name)
        label = f"{kind}/{name}: {what}"
        results = by_name.get(name)
        if not results:
            tally.fail(label, "no result for this check in the API")
            continue
        wrong_kind = [r for r in results if r.get("kind") != kind]
        if wrong_kind:
            tally.fail(label, f"kind is {wrong_kind[0].get('kind')!r}, want {kind!r}")
            continue
        error = verify(results, args)
        tally.check(error is None, label, error)
    unexpected = sorted(set(by_name) - expected_names)
    tally.check(not unexpected, "every result in the API is one the tier configured",
                f"unexpected checks {unexpected}")


def assert_metrics(tally, metrics, hostname, check_names):
    lines = [line for line in metrics.splitlines() if line and not line.startswith("#")]
    up = f'estate_host_up{{host="{hostname}"}} 1'
    tally.check(up in lines, f"/metrics: {up}", "not found")
    check_lines = [line for line in lines if line.startswith("estate_check")]
    if not check_lines:
        tally.skip("/metrics check series",
                   "the collector exports no estate_check_* series yet; check results were "
                   "asserted through the API only")
        return
    for name in sorted(check_names):
        found = any(f'check="{name}"' in line for line in check_lines)
        tally.check(found, f"/metrics: a series for check {name}", "no estate_check_* line")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", required=True)
    parser.add_argument("--kinds", required=True, help="comma-separated kinds to assert")
    parser.add_argument("--dc-hostname", required=True)
    parser.add_argument("--dc-ip", required=True)
    parser.add_argument("--not-run-file", required=True)
    args = parser.parse_args()
    kinds = {kind for kind in args.kinds.split(",") if kind}
    tally = Tally()

    hosts = json.loads(get(args.api, "/api/v1/hosts"))["hosts"]
    tally.check(len(hosts) == 1, "the API lists exactly one host (the agent's)",
                f"{len(hosts)} hosts")
    if hosts:
        host = json.loads(get(args.api, f"/api/v1/hosts/{hosts[0]['id']}"))
        checks = host.get("checks") or []
        assert_checks(tally, checks, kinds, args)
        check_names = {result.get("check") for result in checks}
        assert_metrics(tally, get(args.api, "/metrics"), hosts[0]["hostname"], check_names)

    with open(args.not_run_file, "w", encoding="utf-8") as out:
        for line in tally.not_run:
            out.write(line + "\n")
    print(f"interop: {len(tally.passed)} passed, {len(tally.failed)} failed, "
          f"{len(tally.not_run)} skipped")
    for line in tally.failed:
        print(f"  FAILED: {line}")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
