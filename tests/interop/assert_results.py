#!/usr/bin/env python3
"""Asserts the interop tier's check results, read back through the collector's JSON API
(`/api/v1/hosts/{id}` → `checks`) and `/metrics`, never from the agent's own output, and
through a real Prometheus scraping the collector (PromQL over its HTTP API, --prometheus).

Run by tests/interop/run inside the client namespace, after one `estate-agent once`. Only the
kinds given with --kinds are asserted (the others are not built yet and `run` says so). Exits 1
if any assertion failed. Assertions that could not be made (the collector does not expose
something yet) are written to --not-run-file, one `what: why` per line, for run's summary.
"""

import argparse
import json
import re
import ssl
import sys
import time
import urllib.parse
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


# The collector's CA (its HTTPS side is verified against it); set from --ca-file.
TLS_CONTEXT = None


def get(api, path):
    with urllib.request.urlopen(api + path, timeout=10, context=TLS_CONTEXT) as answer:
        return answer.read().decode()


def measurements(result):
    """name → list of values (the text instead, for a textual measurement); a name may repeat
    (one `answer` per DNS record)."""
    found = {}
    for item in result.get("measurements") or []:
        text = item.get("text")
        found.setdefault(item.get("name"), []).append(text if text else item.get("value"))
    return found


def number(result, name):
    """The first numeric value of a measurement, or None."""
    for value in measurements(result).get(name, []):
        if isinstance(value, (int, float)):
            return value
    return None


def describe(result):
    named = ", ".join(f"{k}={v if len(v) > 1 else v[0]}"
                      for k, v in sorted(measurements(result).items()))
    reason = f" ({result.get('reason')})" if result.get("reason") else ""
    return (f"{result.get('check')} [{result.get('kind')}] {result.get('target')}: "
            f"{result.get('outcome')}{reason}  {named}")


# --- expectations per kind -----------------------------------------------------------------
# Each is (check name, kind, description, function(results, args) → error text or None).
# `results` are the API's results for that check name (one per target).


def all_pass_with(*names, targets=None, also=None):
    """Every target passed, each named measurement is there and positive; `targets`: the exact
    set of targets expected; `also(result)`: a further check returning an error or None."""

    def verify(results, args):
        if targets is not None:
            want = {t.format(**vars(args)) for t in targets}
            got = {result.get("target") for result in results}
            if got != want:
                return f"targets {sorted(got)}, want {sorted(want)}"
        for result in results:
            if result.get("outcome") != "pass":
                return f"{result.get('target')}: {result.get('outcome')} ({result.get('reason')})"
            for name in names:
                value = number(result, name)
                if value is None or value <= 0:
                    return f"{result.get('target')}: measurement {name} is {value!r}, want > 0"
            if also is not None:
                error = also(result, args)
                if error:
                    return f"{result.get('target')}: {error}"
        return None

    return verify


def fails_with_reason(*words):
    """Every target failed with a reason naming one of `words` (case ignored)."""

    def verify(results, _args):
        for result in results:
            if result.get("outcome") != "fail":
                return f"{result.get('target')}: {result.get('outcome')}, want fail"
            reason = (result.get("reason") or "").lower()
            if not reason or not any(word.lower() in reason for word in words):
                return f"{result.get('target')}: reason {reason!r} names none of {words}"
        return None

    return verify


def answer_mentions(text):
    def verify(result, args):
        want = text.format(**vars(args)).lower()
        answers = [str(a) for a in measurements(result).get("answer", [])]
        if not any(want in answer.lower() for answer in answers):
            return f"no `answer` measurement mentions {want!r}: {answers}"
        return None

    return verify


def measurement_is(name, *allowed):
    def verify(result, _args):
        value = number(result, name)
        if value not in allowed:
            return f"{name} is {value!r}, want one of {allowed}"
        return None

    return verify


def within(name, limit):
    """A measurement that is there and whose size is under `limit` (a clock skew between two
    namespaces of one machine is near zero)."""

    def verify(result, _args):
        value = number(result, name)
        if value is None or abs(value) >= limit:
            return f"{name} is {value!r}, want |x| < {limit}"
        return None

    return verify


def text_is(name, want):
    """A text measurement equal to `want` (case ignored)."""

    def verify(result, args):
        expected = want.format(**vars(args)).lower()
        values = [str(v).lower() for v in measurements(result).get(name, [])]
        if expected not in values:
            return f"{name} is {values}, want {expected!r}"
        return None

    return verify


def cert_expires_in_future():
    def verify(result, _args):
        not_after = number(result, "cert_not_after_unix")
        if not_after is None or not_after <= time.time():
            return f"cert_not_after_unix {not_after!r} is not in the future"
        return None

    return verify


def text_contains(name, want):
    """A text measurement containing `want` (case ignored)."""

    def verify(result, args):
        expected = want.format(**vars(args)).lower()
        values = [str(v) for v in measurements(result).get(name, [])]
        if not any(expected in value.lower() for value in values):
            return f"{name} is {values}, want one containing {expected!r}"
        return None

    return verify


def at_least(name, limit):
    def verify(result, _args):
        value = number(result, name)
        if value is None or value < limit:
            return f"{name} is {value!r}, want >= {limit}"
        return None

    return verify


def tls_negotiated():
    """`tls_version` reported as 1.2 or 1.3 (text and value)."""

    def verify(result, _args):
        values = measurements(result).get("tls_version", [])
        if not any(str(v) in ("TLSv1.2", "TLSv1.3") for v in values):
            return f"tls_version is {values}, want TLSv1.2 or TLSv1.3"
        return None

    return verify


def both(*checks):
    def verify(result, args):
        for check in checks:
            error = check(result, args)
            if error:
                return error
        return None

    return verify


def dhcp_broadcast(results, args):
    by_target = {r.get("target"): r for r in results}
    want = {args.dns_ip, args.rogue_ip, "eth0"}
    if set(by_target) != want:
        return f"targets {sorted(by_target)}, want {sorted(want)}"
    server = by_target[args.dns_ip]
    if server.get("outcome") != "pass":
        return f"dnsmasq: {server.get('outcome')} ({server.get('reason')})"
    offered = measurements(server).get("offered_address", [""])[0]
    if not offered.startswith("10.231.0.1"):
        return f"dnsmasq offered {offered!r}, not from its pool"
    rogue = by_target[args.rogue_ip]
    if rogue.get("outcome") != "fail" or number(rogue, "rogue") != 1:
        return f"the rogue: {describe(rogue)}"
    summary = by_target["eth0"]
    if number(summary, "offers") != 2 or number(summary, "rogue_servers") != 1:
        return f"summary: {describe(summary)}"
    if args.rogue_ip not in (summary.get("reason") or ""):
        return f"summary reason does not name the rogue: {summary.get('reason')!r}"
    return None


def dhcp_relay(results, args):
    by_target = {r.get("target"): r for r in results}
    want = {args.dns_ip, f"{args.dns_ip}:67"}
    if set(by_target) != want:
        return f"targets {sorted(by_target)}, want {sorted(want)}"
    for result in results:
        if result.get("outcome") != "pass":
            return f"{result.get('target')}: {result.get('outcome')} ({result.get('reason')})"
    if number(by_target[f"{args.dns_ip}:67"], "offers") != 1:
        return f"summary: {describe(by_target[f'{args.dns_ip}:67'])}"
    return None


def ad_domain(results, args):
    """Every target of the `ad` check passed; discovery found the DC; each probe a member
    relies on is there, with what it measures."""
    failed = [r for r in results if r.get("outcome") != "pass"]
    if failed:
        return "; ".join(f"{r.get('target')}: {r.get('outcome')} ({r.get('reason')})"
                         for r in failed)
    by_target = {r.get("target"): r for r in results}
    dcs = by_target.get(f"_ldap._tcp.dc._msdcs.{args.dc_hostname.split('.', 1)[1]}")
    if dcs is None or (number(dcs, "records") or 0) < 1:
        return f"no discovery result with records >= 1 for the DCs' SRV name: {sorted(by_target)}"

    def probe(suffix):
        found = [r for t, r in by_target.items()
                 if t.lower().startswith(args.dc_hostname.lower()) and t.endswith(suffix)]
        return found[0] if found else None

    for suffix in ("/ldap", "/starttls", "/ldaps", "/gc", "/kerberos-udp", "/kerberos-tcp",
                   "/bind"):
        if probe(suffix) is None:
            return f"no `{args.dc_hostname}:<port>{suffix}` result: {sorted(by_target)}"
    checks = [(probe("/ldap"), within("current_time_skew_seconds", 5)),
              (probe("/ldaps"), cert_expires_in_future()),
              (probe("/kerberos-udp"), within("kdc_time_skew_seconds", 5)),
              (probe("/bind"), lambda r, _a: None if (number(r, "search_results") or 0) >= 1
               else f"search_results is {number(r, 'search_results')!r}, want >= 1")]
    for result, check in checks:
        error = check(result, args)
        if error:
            return f"{result.get('target')}: {error}"
    return None


EXCHANGE_PROTOCOLS = ("owa", "ecp", "ews", "mapi", "rpc", "oab", "Microsoft-Server-ActiveSync",
                      "autodiscover")


def exchange_organisation(results, args):
    """Autodiscover answered at autodiscover.<domain>; every protocol's health page and the SMTP
    service pass on the mail server, with verified certificates."""
    by_target = {r.get("target"): r for r in results}
    summary = by_target.get("autodiscover")
    if summary is None or summary.get("outcome") != "pass":
        return f"autodiscover summary: {summary and describe(summary)}; targets {sorted(by_target)}"
    answered = [m for m in summary.get("measurements", []) if m.get("name") == "answered_step"]
    if not answered or "autodiscover." not in answered[0].get("text", ""):
        return f"autodiscover was not answered by autodiscover.<domain>: {describe(summary)}"
    if not any(t and t.startswith("autodiscover/step") for t in by_target):
        return f"no per-step autodiscover results: {sorted(by_target)}"
    for protocol in EXCHANGE_PROTOCOLS:
        target = f"https://{args.mail_name}/{protocol}/healthcheck.htm"
        result = by_target.get(target)
        if result is None:
            return f"no `{target}` result: {sorted(by_target)}"
        if result.get("outcome") != "pass" or number(result, "http_status") != 200:
            return f"{target}: {describe(result)}"
        error = cert_expires_in_future()(result, args)
        if error:
            return f"{target}: {error}"
    smtp = by_target.get(f"{args.mail_name}:25")
    if smtp is None or smtp.get("outcome") != "pass" or number(smtp, "starttls") != 1:
        return f"smtp on {args.mail_name}:25: {smtp and describe(smtp)}"
    return None


EXPECTATIONS = [
    # tcp
    ("dc-ldap", "tcp", "TCP to the DC's LDAP port (host + port)", all_pass_with("connect_seconds")),
    ("dc-ldaps", "tcp", "TCP to the DC's LDAPS port", all_pass_with("connect_seconds")),
    ("dc-kerberos-tcp", "tcp", "TCP to the DC's KDC", all_pass_with("connect_seconds")),
    ("dc-dns-tcp", "tcp", "TCP to the DC's DNS", all_pass_with("connect_seconds")),
    ("dc-by-name", "tcp", "the DC by name, resolved through Samba's DNS",
     all_pass_with("connect_seconds")),
    ("dnsmasq-dns-tcp", "tcp", "TCP to dnsmasq's DNS", all_pass_with("connect_seconds")),
    ("closed-port", "tcp", "a closed port fails with the refusal as reason",
     fails_with_reason("refused")),
    # dns
    ("samba-srv-ldap", "dns", "the DC discovered by its SRV record in Samba's DNS (UDP)",
     all_pass_with("latency_seconds", "answers", targets=["{dc_ip}:53"],
                   also=answer_mentions("{dc_hostname}"))),
    ("samba-srv-kerberos-tcp", "dns", "the KDC's SRV record from Samba's DNS over TCP",
     all_pass_with("latency_seconds", "answers", targets=["{dc_ip}:53"],
                   also=answer_mentions("{dc_hostname}"))),
    ("dnsmasq-a", "dns", "dnsmasq answers its A record with the configured address",
     all_pass_with("latency_seconds", "answers", targets=["{dns_ip}:53"],
                   also=answer_mentions("{dnsmasq_address}"))),
    ("dnsmasq-nxdomain", "dns", "dnsmasq's NXDOMAIN for an unknown name is what was expected",
     all_pass_with("latency_seconds", targets=["{dns_ip}:53"], also=measurement_is("rcode", 3))),
    ("dnsmasq-wrong-value", "dns", "an answer without the expected value fails, naming it",
     fails_with_reason("10.231.0.99")),
    ("resolver-forwarded", "dns",
     "the client's resolver (the DC) forwards lan.test to dnsmasq and the answer comes back",
     all_pass_with("latency_seconds", targets=["{dc_ip}:53"],
                   also=answer_mentions("{dnsmasq_address}"))),
    # ldap
    ("ldaps-bind", "ldap",
     "LDAPS: certificate expiry reported, rootDSE read, skew measured, service account binds "
     "and finds itself",
     all_pass_with("latency_seconds", "cert_not_after_unix", "cert_days_left", "search_results",
                   targets=["{dc_hostname}:636/ldaps"],
                   also=both(text_is("dns_host_name", "{dc_hostname}"),
                             text_is("default_naming_context", "DC=estate,DC=test"),
                             measurement_is("synchronized", 1), measurement_is("gc_ready", 1),
                             within("current_time_skew_seconds", 5),
                             cert_expires_in_future()))),
    ("starttls-bind", "ldap", "StartTLS on 389, bind as user@domain, search",
     all_pass_with("latency_seconds", "cert_not_after_unix", "search_results",
                   targets=["{dc_hostname}:389/starttls"])),
    ("ldap-rootdse", "ldap", "the rootDSE over plain LDAP, anonymously",
     all_pass_with("latency_seconds", targets=["{dc_ip}:389/ldap"],
                   also=both(text_is("dns_host_name", "{dc_hostname}"),
                             within("current_time_skew_seconds", 5)))),
    ("ldaps-verified", "ldap", "Samba's self-signed certificate fails verification, saying so",
     fails_with_reason("self-signed", "unknown issuer", "certificate")),
    ("ldaps-wrong-password", "ldap", "a bind with a wrong password fails, saying so",
     fails_with_reason("invalidcredentials", "invalid credentials", "bind")),
    # ad
    ("domain", "ad",
     "the domain: DCs discovered from Samba's DNS, each DC's LDAP, StartTLS, LDAPS, GC, Kerberos "
     "and service-account bind pass, skew and certificate expiry measured", ad_domain),
    # dhcp
    ("dhcp-broadcast", "dhcp",
     "a broadcast DISCOVER on eth0: dnsmasq offers from its pool, the rogue is named",
     dhcp_broadcast),
    ("dhcp-relay", "dhcp", "dnsmasq asked as a relay agent (giaddr the client) offers from its pool",
     dhcp_relay),
    ("dhcp-relay-rogue", "dhcp", "the rogue asked as a relay agent is reported as a rogue",
     fails_with_reason("rogue")),
    # exchange
    ("exchange-org", "exchange",
     "the organisation without credentials: Autodiscover answered by autodiscover.<domain> (401 "
     "from nginx), every protocol's healthcheck.htm and Postfix's SMTP with STARTTLS pass",
     exchange_organisation),
    # smtp
    ("mail-starttls", "smtp",
     "Postfix: 220 greeting read, STARTTLS offered and negotiated, certificate verified against "
     "the run's CA, its expiry reported",
     all_pass_with("latency_seconds", "cert_not_after_unix", "cert_days_left",
                   targets=["{mail_name}:25"],
                   also=both(measurement_is("starttls", 1), tls_negotiated(),
                             text_contains("banner", "ESMTP"),
                             text_contains("extensions", "STARTTLS"),
                             cert_expires_in_future(), at_least("cert_days_left", 14)))),
    ("mail-no-starttls", "smtp",
     "STARTTLS required where Postfix does not offer it fails, saying so",
     fails_with_reason("starttls")),
    # http
    ("owa-healthcheck", "http",
     "nginx's OWA health page over HTTPS: status 200, body `200 OK`, certificate verified",
     all_pass_with("latency_seconds", "cert_not_after_unix",
                   targets=["https://{mail_name}/owa/healthcheck.htm"],
                   also=both(measurement_is("http_status", 200), tls_negotiated(),
                             cert_expires_in_future()))),
    ("autodiscover-unauthenticated", "http",
     "Autodiscover without credentials answers 401, as expected by the check",
     all_pass_with("latency_seconds",
                   targets=["https://{autodiscover_name}/autodiscover/autodiscover.xml"],
                   also=measurement_is("http_status", 401))),
    ("broken-healthcheck", "http", "a health page answering 503 fails, naming the status",
     fails_with_reason("503")),
    # tls
    ("mail-https", "tls",
     "nginx's TLS on 443: handshake, version, certificate verified against the run's CA, expiry",
     all_pass_with("cert_not_after_unix", "cert_days_left", targets=["{mail_name}:443"],
                   also=both(tls_negotiated(), cert_expires_in_future(),
                             at_least("cert_days_left", 14)))),
    ("mail-https-untrusted", "tls",
     "the same certificate without the run's CA fails verification, saying so",
     fails_with_reason("unknown issuer", "unknownissuer", "certificate", "verif")),
    # kerberos
    ("kdc", "kerberos",
     "the KDC answers over UDP and TCP with PREAUTH_REQUIRED for the service account, skew measured",
     all_pass_with("latency_seconds",
                   targets=["{dc_hostname}:88/udp", "{dc_hostname}:88/tcp"],
                   also=both(measurement_is("krb_error_code", 25),
                             within("kdc_time_skew_seconds", 5)))),
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


def parse_metrics(text):
    """[(name, {label: value}, value)] for every sample line."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        pairs = {}
        for match in re.finditer(r'(\w+)="((?:[^"\\]|\\.)*)"', labels):
            pairs[match.group(1)] = match.group(2)
        try:
            samples.append((name, pairs, float(value)))
        except ValueError:
            pass
    return samples


def assert_metrics(tally, text, hostname, checks):
    samples = parse_metrics(text)
    up = [v for n, l, v in samples if n == "estate_host_up" and l.get("host") == hostname]
    tally.check(up == [1.0], f"/metrics: estate_host_up{{host=\"{hostname}\"}} 1", f"found {up}")
    if not any(name.startswith("estate_check_") for name, _, _ in samples):
        tally.skip("/metrics check series",
                   "the collector exports no estate_check_* series yet; check results were "
                   "asserted through the API only")
        return
    # Every passed or failed result has its success series with the matching value; skipped
    # targets are absent by design.
    success = {(l.get("check"), l.get("target")): v for n, l, v in samples
               if n == "estate_check_success" and l.get("host") == hostname}
    wrong = []
    for result in checks:
        key = (result.get("check"), result.get("target"))
        want = {"pass": 1.0, "fail": 0.0}.get(result.get("outcome"))
        if want is not None and success.get(key) != want:
            wrong.append(f"{key[0]} {key[1]}: {success.get(key)!r}, want {want}")
    tally.check(not wrong, "/metrics: estate_check_success matches every result's outcome",
                "; ".join(wrong))
    # Measurements that the collector turns into metrics appear with their check's labels.
    for metric, measurement in [("estate_check_connect_seconds", "connect_seconds"),
                                ("estate_check_latency_seconds", "latency_seconds"),
                                ("estate_check_kdc_clock_skew_seconds", "kdc_time_skew_seconds"),
                                ("estate_check_clock_skew_seconds", "current_time_skew_seconds"),
                                ("estate_check_certificate_not_after_timestamp_seconds",
                                 "cert_not_after_unix"),
                                ("estate_check_tls_version", "tls_version"),
                                ("estate_check_http_status_code", "http_status"),
                                ("estate_check_smtp_starttls_offered", "starttls")]:
        # Present at all (tls_version is a text with a value: `number` sees the text).
        reported = {(r.get("check"), r.get("target")) for r in checks
                    if measurement in measurements(r)}
        if not reported:
            continue
        exported = {(l.get("check"), l.get("target")) for n, l, _ in samples
                    if n == metric and l.get("host") == hostname}
        missing = sorted(reported - exported)
        tally.check(not missing, f"/metrics: {metric} for every result measuring {measurement}",
                    f"missing for {missing}")


def promql(prometheus, query):
    """The result vector of an instant PromQL query through Prometheus's HTTP API."""
    answer = json.loads(get(prometheus, "/api/v1/query?" + urllib.parse.urlencode({"query": query})))
    if answer.get("status") != "success":
        raise RuntimeError(f"query {query!r}: {answer}")
    return answer["data"]["result"]


def poll(what, fetch, done, limit=20):
    """fetch() every half second until done(value) or `limit` seconds; the last value."""
    deadline = time.monotonic() + limit
    value = fetch()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = fetch()
    return value


def assert_prometheus(tally, prometheus, hostname, checks, kinds, args):
    """A real Prometheus scraped the collector: PromQL returns the host's liveness and check
    results, the repository's alert rules are loaded and evaluate cleanly, and the rogue DHCP
    server raises its alert."""
    selector = f'host="{hostname}"'
    up = poll("estate_host_up", lambda: promql(prometheus, f"estate_host_up{{{selector}}}"),
              lambda result: [sample["value"][1] for sample in result] == ["1"])
    values = [sample["value"][1] for sample in up]
    tally.check(values == ["1"], f"PromQL: estate_host_up{{{selector}}} is 1",
                f"Prometheus returned {values}")
    # The same pass/fail per (check, target) as the collector's API; skipped targets absent.
    want = {(r.get("check"), r.get("target")): {"pass": "1", "fail": "0"}[r.get("outcome")]
            for r in checks if r.get("outcome") in ("pass", "fail")}
    def series():
        return {(sample["metric"].get("check"), sample["metric"].get("target")): sample["value"][1]
                for sample in promql(prometheus, f"estate_check_success{{{selector}}}")}
    got = poll("estate_check_success", series, lambda got: got == want)
    tally.check(bool(want) and got == want,
                f"PromQL: estate_check_success{{{selector}}} has the API's {len(want)} pass/fail "
                "results",
                f"missing {sorted(set(want) - set(got))}, unexpected {sorted(set(got) - set(want))}, "
                f"different {sorted(k for k in set(want) & set(got) if want[k] != got[k])}")
    failing = promql(prometheus, f"count(estate_check_success{{{selector}}} == 0)")
    failing_count = int(failing[0]["value"][1]) if failing else 0
    want_failing = sum(1 for value in want.values() if value == "0")
    tally.check(failing_count == want_failing,
                f"PromQL: count(estate_check_success == 0) is {want_failing}, the API's failures",
                f"Prometheus counts {failing_count}")

    targets = json.loads(get(prometheus, "/api/v1/targets"))["data"]["activeTargets"]
    health = [(target["labels"].get("job"), target["health"]) for target in targets]
    tally.check(health == [("estate", "up")], "Prometheus's scrape of the collector is healthy",
                f"targets {health}")

    def rules():
        groups = json.loads(get(prometheus, "/api/v1/rules"))["data"]["groups"]
        return [(rule["name"], rule["health"], rule.get("lastError", ""))
                for group in groups for rule in group["rules"]]
    loaded = poll("rules", rules, lambda found: found and all(h == "ok" for _, h, _ in found))
    tally.check(len(loaded) >= 6 and all(health == "ok" for _, health, _ in loaded),
                f"Prometheus loaded deploy/prometheus/estate.rules.yml ({len(loaded)} alerts) and "
                "evaluates every rule without error",
                f"{[rule for rule in loaded if rule[1] != 'ok'] or loaded}")

    def alerts():
        return json.loads(get(prometheus, "/api/v1/alerts"))["data"]["alerts"]
    def firing(found, name):
        return [a for a in found if a["labels"].get("alertname") == name and a["state"] == "firing"]
    if "dhcp" in kinds and args.rogue_ip:
        found = poll("alerts", alerts, lambda found: any(
            a["labels"].get("target") == args.rogue_ip for a in firing(found, "EstateRogueDhcpServer")))
        rogue = sorted({a["labels"].get("target") for a in firing(found, "EstateRogueDhcpServer")})
        tally.check(rogue == [args.rogue_ip],
                    f"Prometheus alert EstateRogueDhcpServer fires for the rogue {args.rogue_ip} "
                    "and no other server", f"firing for {rogue}")
    else:
        tally.skip("alert EstateRogueDhcpServer", "the dhcp kind is not exercised in this run")
    stale = [a["labels"].get("host") for a in firing(alerts(), "EstateHostStale")]
    tally.check(not stale, "Prometheus alert EstateHostStale does not fire for a reporting host",
                f"firing for {stale}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api", required=True)
    parser.add_argument("--ca-file", help="the CA of the collector's HTTPS certificate")
    parser.add_argument("--kinds", required=True, help="comma-separated kinds to assert")
    parser.add_argument("--rogue-ip", default="", help="the rogue DHCP server's address")
    parser.add_argument("--dc-hostname", required=True)
    parser.add_argument("--dc-ip", required=True)
    parser.add_argument("--dns-ip", required=True)
    parser.add_argument("--dnsmasq-address", required=True)
    parser.add_argument("--mail-name", default="", help="Postfix's and nginx's name")
    parser.add_argument("--autodiscover-name", default="", help="nginx's Autodiscover name")
    parser.add_argument("--prometheus", default="",
                        help="a Prometheus scraping the collector, to query with PromQL")
    parser.add_argument("--not-run-file", required=True)
    parser.add_argument("--secret-file", action="append", default=[],
                        help="a password that must appear nowhere in the API or /metrics")
    args = parser.parse_args()
    global TLS_CONTEXT
    if args.ca_file:
        TLS_CONTEXT = ssl.create_default_context(cafile=args.ca_file)
    kinds = {kind for kind in args.kinds.split(",") if kind}
    tally = Tally()

    hosts = json.loads(get(args.api, "/api/v1/hosts"))["hosts"]
    tally.check(len(hosts) == 1, "the API lists exactly one host (the agent's)",
                f"{len(hosts)} hosts")
    if hosts:
        host = json.loads(get(args.api, f"/api/v1/hosts/{hosts[0]['id']}"))
        checks = host.get("checks") or []
        assert_checks(tally, checks, kinds, args)
        metrics = get(args.api, "/metrics")
        assert_metrics(tally, metrics, hosts[0]["hostname"], checks)
        if args.prometheus:
            assert_prometheus(tally, args.prometheus, hosts[0]["hostname"], checks, kinds, args)
        else:
            tally.skip("Prometheus queries", "no --prometheus given")
        exposed = json.dumps(host) + metrics
        for path in args.secret_file:
            with open(path, encoding="utf-8") as secret_file:
                secret = secret_file.read().strip()
            tally.check(secret not in exposed,
                        f"the password in {path.rsplit('/', 1)[-1]} appears nowhere in the API "
                        "or /metrics", "it does")

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
