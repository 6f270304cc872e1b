"""deploy/kubernetes and deploy/Containerfile, checked without a cluster or
a container engine.

`kubectl kustomize` renders the base and the example overlay (any kustomize
from v2.0.3 on; FG_KUBECTL names another kubectl), and each render is checked
against the flowgate.conf its ConfigMap carries: that file, with dummy
certificates and secrets at the paths the Deployment mounts, passes
`flowgate -t`; the container ports, probes, Service, mounts, drain timings,
security settings, NetworkPolicies, PDB and HPA agree with it. The
Containerfile is read as text: its stages, user, what it copies, and its
runtime packages against the libraries build/flowgate is linked with.

Every check is a function of the render; test_kubernetes_checks_catch_breakage
breaks one thing at a time in a render and expects the matching check to fail.
"""

import copy
import math
import os
import re
import shutil
import subprocess

from harness import ROOT, TestFailure, check, eq, fail, run_flowgate, tmpdir, Skip

TIMEOUT = 120
DEPLOY = os.path.join(ROOT, "deploy", "kubernetes")
RENDERS = ("base", "overlays/example")
CONTAINERFILE = os.path.join(ROOT, "deploy", "Containerfile")

# How long a terminating pod may still receive new connections after its
# deletion: the EndpointSlice update reaching every node's kube-proxy, and a
# cloud balancer's health check (externalTrafficPolicy: Local) failing its
# threshold. The README's "Kubernetes" section gives the same figure.
ENDPOINT_PROPAGATION_MS = 10000
# After the drain, the process's own exit and the kubelet's bookkeeping.
EXIT_MARGIN_S = 5
# debian:12-slim holds these; the runtime stage need not install them.
BASE_IMAGE_PACKAGES = {"libc6"}
PROXY_ANNOTATION = re.compile(r"proxy-protocol|proxy_protocol|proxyprotocol", re.I)


# ---------------------------------------------------------------- libconfig

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|\d+\.\d*(?:[eE][-+]?\d+)?|\d+(?:[eE][-+]?\d+)?)L{0,2})
  | (?P<name>[A-Za-z*][-A-Za-z0-9_*]*)
  | (?P<punct>[=:;,{}\[\]()])
""", re.S | re.X)


def _tokens(text):
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            fail("flowgate.conf: cannot read %r" % text[pos:pos + 40])
        pos = m.end()
        if m.lastgroup != "space":
            out.append((m.lastgroup, m.group()))
    return out


def parse_libconfig(text):
    """The subset of libconfig flowgate.conf uses: groups as dicts, arrays and
    lists as lists, strings, numbers, booleans."""
    toks = _tokens(text)
    pos = [0]

    def peek():
        return toks[pos[0]] if pos[0] < len(toks) else (None, None)

    def take(value=None):
        tok = peek()
        if tok[0] is None or (value is not None and tok[1] != value):
            fail("flowgate.conf: expected %r, got %r" % (value, tok[1]))
        pos[0] += 1
        return tok

    def value():
        kind, text = take()
        if kind == "string":
            s = bytes(text[1:-1], "utf-8").decode("unicode_escape")
            while peek()[0] == "string":  # adjacent strings are one
                s += bytes(take()[1][1:-1], "utf-8").decode("unicode_escape")
            return s
        if kind == "number":
            t = text.rstrip("L")
            return float(t) if re.search(r"[.eE]", t) and not t.lower().startswith("0x") \
                else int(t, 0)
        if kind == "name" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if text == "{":
            return settings("}")
        if text in "[(":
            end = "]" if text == "[" else ")"
            items = []
            while peek()[1] != end:
                items.append(value())
                if peek()[1] == ",":
                    take()
            take(end)
            return items
        fail("flowgate.conf: unexpected %r" % text)

    def settings(end):
        group = {}
        while peek()[1] != end:
            kind, name = take()
            check(kind == "name", "flowgate.conf: expected a setting name, got %r" % name)
            sep = take()[1]
            check(sep in "=:", "flowgate.conf: expected = or : after %s" % name)
            group[name] = value()
            if peek()[1] in (";", ","):
                take()
        if end is not None:
            take(end)
        return group

    return settings(None)


# ---------------------------------------------------------------- the render

def _kubectl():
    exe = shutil.which(os.environ.get("FG_KUBECTL", "kubectl"))
    if exe is None:
        raise Skip("no kubectl (tools/deps.sh test installs kubernetes-client)")
    return exe


def _port(addr):
    m = re.match(r"^(?:\[[^\]]*\]|[^:]*):(\d+)$", addr)
    check(m, "not an address with a port: %r" % addr)
    return int(m.group(1))


class Render:
    """One `kubectl kustomize` output and the flowgate.conf it mounts."""

    def __init__(self, name, docs):
        self.name = name
        self.docs = docs
        deps = self.kind("Deployment")
        eq(len(deps), 1, "%s: Deployments" % name)
        self.deployment = deps[0]
        self.pod = self.deployment["spec"]["template"]["spec"]
        containers = [c for c in self.pod["containers"] if c["name"] == "flowgate"]
        eq(len(containers), 1, "%s: containers named flowgate" % name)
        self.container = containers[0]
        self.conf_path, self.conf_text = self._config()
        self.conf = parse_libconfig(self.conf_text)

    def kind(self, kind):
        return [d for d in self.docs if d and d.get("kind") == kind]

    def one(self, kind, name):
        found = [d for d in self.kind(kind) if d["metadata"]["name"] == name]
        eq(len(found), 1, "%s: %s %s" % (self.name, kind, name))
        return found[0]

    def volume(self, name):
        found = [v for v in self.pod.get("volumes", []) if v["name"] == name]
        eq(len(found), 1, "%s: volumes named %s" % (self.name, name))
        return found[0]

    def mount_of(self, path):
        """(volumeMount, volume) holding PATH, the deepest mount that does."""
        best = None
        for m in self.container.get("volumeMounts", []):
            root = m["mountPath"].rstrip("/") + "/"
            if path.startswith(root) and (best is None or len(root) > len(best["mountPath"])):
                best = m
        if best is None:
            return None, None
        return best, self.volume(best["name"])

    def _config(self):
        args = list(self.container.get("command", [])[1:]) + list(self.container.get("args", []))
        check("-c" in args and args.index("-c") + 1 < len(args),
              "%s: the container's arguments give no -c FILE: %r" % (self.name, args))
        path = args[args.index("-c") + 1]
        mount, vol = self.mount_of(path)
        check(mount is not None and "configMap" in vol,
              "%s: -c %s is not in a ConfigMap volume" % (self.name, path))
        check(not mount.get("subPath"), "%s: the ConfigMap is mounted with subPath" % self.name)
        cm = self.one("ConfigMap", vol["configMap"]["name"])
        key = os.path.relpath(path, mount["mountPath"])
        check(key in cm.get("data", {}), "%s: ConfigMap %s has no key %s"
              % (self.name, cm["metadata"]["name"], key))
        return path, cm["data"][key]

    def named_port(self, port):
        """A container port by number or by name, as a number."""
        if isinstance(port, int):
            return port
        for p in self.container.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
        fail("%s: no container port named %r" % (self.name, port))

    def pod_labels(self):
        return self.deployment["spec"]["template"]["metadata"].get("labels", {})

    def listen(self):
        ls = self.conf.get("listen", {})
        return (ls.get("https", ["0.0.0.0:8443"]), ls.get("http", ["0.0.0.0:8080"]),
                ls.get("admin", "127.0.0.1:9901"))


def render(sub):
    p = subprocess.run([_kubectl(), "kustomize", os.path.join(DEPLOY, sub)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    eq(p.returncode, 0, "kubectl kustomize %s (stderr %r)" % (sub, p.stderr[-1000:]))
    import yaml  # python3-yaml (tools/deps.sh test)
    return Render(sub, list(yaml.safe_load_all(p.stdout)))


def _renders():
    return [render(sub) for sub in RENDERS]


def _selects(selector, labels):
    ml = selector.get("matchLabels", {})
    check(ml or selector.get("matchExpressions"), "an empty selector selects everything")
    check(not selector.get("matchExpressions"), "matchExpressions are not checked here")
    return all(labels.get(k) == v for k, v in ml.items())


# ---------------------------------------------------------------- the checks

def check_config_passes(r):
    """The ConfigMap's flowgate.conf, with a dummy file at each path it names
    under the mounts and a dummy value in each variable the container gets,
    passes flowgate -t."""
    root = os.path.join(tmpdir(), r.name.replace("/", "_"))
    text = r.conf_text
    for m in r.container.get("volumeMounts", []):
        text = text.replace('"%s/' % m["mountPath"].rstrip("/"),
                            '"%s%s/' % (root, m["mountPath"].rstrip("/")))
    conf = parse_libconfig(text)
    for c in conf.get("tls", {}).get("certificates", []):
        for path in (c["cert"], c["key"]):
            check(path.startswith(root + "/"), "%s: %s is outside every mount" % (r.name, path))
            os.makedirs(os.path.dirname(path), exist_ok=True)
        p = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                            "/CN=flowgate.test", "-keyout", c["key"], "-out", c["cert"]],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        eq(p.returncode, 0, "openssl req (%r)" % p.stdout[-300:])
    for key, path in _secret_settings(conf, "_file"):
        check(path.startswith(root + "/"), "%s: %s = %s is outside every mount"
              % (r.name, key, path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
    env = {"FLOWGATE_JWT_SECRET": ""}
    for e in r.container.get("env", []):
        env[e["name"]] = e.get("value", "dummy-" + os.urandom(8).hex())
    conf_file = root + r.conf_path
    os.makedirs(os.path.dirname(conf_file), exist_ok=True)
    with open(conf_file, "w") as f:
        f.write(text)
    p = run_flowgate(["-t", "-c", conf_file], env=env)
    eq(p.returncode, 0, "%s: flowgate -t on the ConfigMap's configuration (stderr %r)"
       % (r.name, p.stderr[-1500:]))


def _secret_settings(conf, suffix, where=""):
    """(dotted key, value) of every non-empty setting whose name ends in SUFFIX."""
    out = []
    items = conf.items() if isinstance(conf, dict) else enumerate(conf)
    for k, v in items:
        key = "%s.%s" % (where, k) if isinstance(k, str) else "%s[%d]" % (where, k)
        if isinstance(v, (dict, list)):
            out += _secret_settings(v, suffix, key)
        elif isinstance(k, str) and k.endswith(suffix) and isinstance(v, str) and v:
            out.append((key.lstrip("."), v))
    return out


def check_ports_and_probes(r):
    """Container ports are the configuration's listeners, every listener binds
    the pod's address, the probes ask the admin listener for /healthz and
    /readyz, and the Service publishes https and http (not admin) by name,
    with the https port the redirect writes."""
    https, http, admin = r.listen()
    check(admin, "%s: the admin listener is off: nothing answers the probes" % r.name)
    for addr in list(https) + list(http) + [admin]:
        host = addr.rsplit(":", 1)[0]
        check(host in ("0.0.0.0", "[::]"), "%s: %s does not bind the pod's address: the "
              "kubelet and the Service cannot reach it" % (r.name, addr))
    want = {_port(a) for a in list(https) + list(http) + [admin]}
    ports = {p["containerPort"] for p in r.container.get("ports", [])}
    eq(ports, want, "%s: container ports against the configuration's listeners" % r.name)
    by_name = {p["name"]: p["containerPort"] for p in r.container.get("ports", []) if "name" in p}

    probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    if "startupProbe" in r.container:
        probes["startupProbe"] = "/healthz"
    for probe, path in probes.items():
        get = r.container.get(probe, {}).get("httpGet")
        check(get, "%s: no %s httpGet" % (r.name, probe))
        eq(get.get("path"), path, "%s: %s path" % (r.name, probe))
        eq(r.named_port(get.get("port")), _port(admin), "%s: %s port" % (r.name, probe))
        check(get.get("scheme", "HTTP") == "HTTP", "%s: %s is not plain HTTP" % (r.name, probe))

    services = r.kind("Service")
    eq(len(services), 1, "%s: Services" % r.name)
    svc = services[0]
    eq(svc["spec"].get("type"), "LoadBalancer", "%s: Service type" % r.name)
    check(_selects({"matchLabels": svc["spec"].get("selector", {})}, r.pod_labels()),
          "%s: the Service does not select the pods" % r.name)
    published = {}
    for p in svc["spec"]["ports"]:
        target = p.get("targetPort", p["port"])
        check(isinstance(target, str) and target in by_name,
              "%s: Service port %s targets %r, not a named container port"
              % (r.name, p.get("name"), target))
        published[by_name[target]] = p["port"]
    check(_port(admin) not in published, "%s: the Service publishes the admin port" % r.name)
    eq(set(published), {_port(a) for a in list(https) + list(http)},
       "%s: container ports the Service publishes" % r.name)
    https_port = r.conf.get("redirect", {}).get("https_port", 8443)
    eq(https_port, published[_port(https[0])],
       "%s: redirect.https_port against the Service's https port" % r.name)
    proxied = any(PROXY_ANNOTATION.search(k) for k in
                  (svc["metadata"].get("annotations") or {}))
    eq(bool(r.conf.get("listen", {}).get("proxy_protocol", False)), proxied,
       "%s: listen.proxy_protocol against a PROXY annotation on the Service" % r.name)


def check_secrets_mounted(r):
    """Every certificate, key and *_file of the configuration is in a whole
    Secret volume (so the kubelet's updates reach it and reload.watch sees
    them), each certificate's from a cert-manager Certificate; each *_env
    variable comes from a Secret; no Secret is in the render."""
    cert_secrets = {c["spec"]["secretName"] for c in r.kind("Certificate")}
    paths = []
    for i, c in enumerate(r.conf.get("tls", {}).get("certificates", [])):
        paths += [("tls.certificates[%d].cert" % i, c["cert"], True),
                  ("tls.certificates[%d].key" % i, c["key"], True)]
    paths += [(k, v, False) for k, v in _secret_settings(r.conf, "_file")]
    check(paths, "%s: the configuration reads no file" % r.name)
    for key, path, is_tls in paths:
        mount, vol = r.mount_of(path)
        check(mount is not None, "%s: %s = %s is in no volume" % (r.name, key, path))
        check("secret" in vol, "%s: %s = %s is in volume %s, not a Secret"
              % (r.name, key, path, vol["name"]))
        check(not mount.get("subPath"), "%s: %s is mounted with subPath: never updated"
              % (r.name, key))
        check(mount.get("readOnly"), "%s: the mount of %s is writable" % (r.name, key))
        name = os.path.relpath(path, mount["mountPath"])
        if is_tls:
            check(vol["secret"]["secretName"] in cert_secrets,
                  "%s: %s is in Secret %s, which no Certificate writes"
                  % (r.name, key, vol["secret"]["secretName"]))
            check(name in ("tls.crt", "tls.key"), "%s: %s is %s, not a file cert-manager "
                  "writes" % (r.name, key, name))
        items = vol["secret"].get("items")
        if items:
            check(name in {i["path"] for i in items}, "%s: %s is not among the volume's items"
                  % (r.name, key))
    env = {e["name"]: e for e in r.container.get("env", [])}
    for key, var in _secret_settings(r.conf, "_env"):
        e = env.get(var)
        check(e is not None, "%s: %s = %s, which the container does not get" % (r.name, key, var))
        check("secretKeyRef" in e.get("valueFrom", {}), "%s: %s is not from a Secret"
              % (r.name, var))
    eq([s["metadata"]["name"] for s in r.kind("Secret")], [], "%s: Secrets in the render" % r.name)


def _prestop_seconds(r):
    pre = r.container.get("lifecycle", {}).get("preStop")
    check(pre, "%s: no preStop pause" % r.name)
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    check(len(cmd) == 2 and os.path.basename(cmd[0]) == "sleep" and cmd[1].isdigit(),
          "%s: preStop is not a plain sleep: %r" % (r.name, pre))
    return int(cmd[1])


def check_drain_timings(r):
    """preStop pause + shutdown_delay_ms + shutdown_timeout_ms + a margin fit
    in terminationGracePeriodSeconds; the delay outlasts the endpoint removal."""
    pause = _prestop_seconds(r)
    delay = r.conf.get("shutdown_delay_ms", 0)
    timeout = r.conf.get("shutdown_timeout_ms", 10000)
    grace = r.pod.get("terminationGracePeriodSeconds", 30)
    check(delay > ENDPOINT_PROPAGATION_MS, "%s: shutdown_delay_ms %d does not outlast the "
          "endpoint propagation (%d ms)" % (r.name, delay, ENDPOINT_PROPAGATION_MS))
    total = pause + (delay + timeout) / 1000.0 + EXIT_MARGIN_S
    check(total <= grace, "%s: preStop %d s + delay %d ms + timeout %d ms + %d s = %.1f s, "
          "over terminationGracePeriodSeconds %d" % (r.name, pause, delay, timeout,
                                                     EXIT_MARGIN_S, total, grace))


def _container_user():
    with open(CONTAINERFILE) as f:
        users = re.findall(r"^USER\s+(\S+)", f.read(), re.M)
    check(users, "the Containerfile has no USER")
    return users[-1].split(":")[0]


def check_security(r):
    """Non-root as the image's numeric user, read-only root, no capability,
    no privilege escalation, seccomp RuntimeDefault, no API token, resources
    set and workers matching the CPU limit, spread over zones and nodes."""
    pod_sc = r.pod.get("securityContext", {})
    sc = r.container.get("securityContext", {})

    def either(key):
        return sc.get(key, pod_sc.get(key))

    eq(either("runAsNonRoot"), True, "%s: runAsNonRoot" % r.name)
    eq(str(either("runAsUser")), _container_user(), "%s: runAsUser against the Containerfile's "
       "USER" % r.name)
    eq(sc.get("readOnlyRootFilesystem"), True, "%s: readOnlyRootFilesystem" % r.name)
    eq(sc.get("allowPrivilegeEscalation"), False, "%s: allowPrivilegeEscalation" % r.name)
    check(not sc.get("privileged"), "%s: privileged" % r.name)
    caps = sc.get("capabilities", {})
    eq(caps.get("drop"), ["ALL"], "%s: capabilities dropped" % r.name)
    eq(caps.get("add", []), [], "%s: capabilities added" % r.name)
    eq((either("seccompProfile") or {}).get("type"), "RuntimeDefault", "%s: seccomp" % r.name)
    eq(r.pod.get("automountServiceAccountToken"), False,
       "%s: automountServiceAccountToken" % r.name)
    for probe in ("hostNetwork", "hostPID", "hostIPC"):
        check(not r.pod.get(probe), "%s: %s" % (r.name, probe))

    res = r.container.get("resources", {})
    for part in ("requests", "limits"):
        for what in ("cpu", "memory"):
            check(what in res.get(part, {}), "%s: no resources.%s.%s" % (r.name, part, what))
    cpu = str(res["limits"]["cpu"])
    cores = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    workers = r.conf.get("workers", 0)
    check(workers > 0, "%s: workers = 0 counts the node's CPUs, not the container's" % r.name)
    eq(workers, max(1, math.ceil(cores)), "%s: workers against the CPU limit %s" % (r.name, cpu))

    eq(r.deployment["spec"].get("replicas"), 3, "%s: replicas" % r.name)
    spread = r.pod.get("topologySpreadConstraints", [])
    keys = {c["topologyKey"] for c in spread}
    check({"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys,
          "%s: topology spread over %s" % (r.name, sorted(keys)))
    for c in spread:
        check(_selects(c["labelSelector"], r.pod_labels()),
              "%s: the %s spread does not count these pods" % (r.name, c["topologyKey"]))


def _policy_ports(rule):
    return {(p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports", [])}


def _egress_to_namespace(policies, ns):
    """The ports flowgate may reach in namespace NS."""
    ports = set()
    for pol in policies:
        for rule in pol["spec"].get("egress", []):
            for peer in rule.get("to", []):
                sel = peer.get("namespaceSelector", {}).get("matchLabels", {})
                if sel.get("kubernetes.io/metadata.name") == ns:
                    ports |= _policy_ports(rule)
    return ports


def check_network_policies(r):
    """Default deny for ingress and egress; ingress to the listeners, the admin
    port only from a named source; egress only to the configuration's
    upstream and preview namespaces on their ports, Redis and Sentinel, and
    kube-dns on 53 UDP and TCP."""
    pols = r.kind("NetworkPolicy")
    deny = [p for p in pols if p["spec"].get("podSelector") == {}
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    check(deny, "%s: no default-deny NetworkPolicy (podSelector {}, Ingress and Egress, "
          "no rule)" % r.name)
    mine = [p for p in pols if p["spec"].get("podSelector")
            and _selects(p["spec"]["podSelector"], r.pod_labels())]
    https, http, admin = r.listen()
    ingress = [rule for p in mine for rule in p["spec"].get("ingress", [])]
    open_ports = set()
    for rule in ingress:
        check(rule.get("ports"), "%s: an ingress rule without ports" % r.name)
        if not rule.get("from"):
            open_ports |= _policy_ports(rule)
    eq(open_ports, {("TCP", _port(a)) for a in list(https) + list(http)},
       "%s: ports open to every source" % r.name)
    check(any(("TCP", _port(admin)) in _policy_ports(rule) and rule.get("from")
              for rule in ingress), "%s: nothing may reach the admin port (monitoring)" % r.name)

    egress = [rule for p in mine for rule in p["spec"].get("egress", [])]
    for rule in egress:
        check(rule.get("to") and rule.get("ports"), "%s: an egress rule open to every "
              "destination or port: %r" % (r.name, rule))
    wanted = {}
    servers = [s for u in r.conf.get("upstreams", {}).values() for s in u.get("servers", [])]
    if "previews" in r.conf:
        servers.append(r.conf["previews"]["upstream"])
    redis = r.conf.get("rate_limit", {}).get("redis", {})
    servers += [redis.get("address", "127.0.0.1:6379")] + list(redis.get("sentinels", []))
    for s in servers:
        m = re.match(r"^[^:]*?\.([a-z0-9-]+)\.svc\.cluster\.local\.?:(\d+)$", s)
        check(m, "%s: %s is not a Service name (NAME.NAMESPACE.svc.cluster.local:PORT)"
              % (r.name, s))
        wanted.setdefault(m.group(1), set()).add(("TCP", int(m.group(2))))
    redis_ns = re.match(r"^[^:]*?\.([a-z0-9-]+)\.svc", redis.get("address", "")).group(1)
    wanted[redis_ns] |= {("TCP", 6379), ("TCP", 26379)}
    for ns, ports in sorted(wanted.items()):
        have = _egress_to_namespace(mine, ns)
        check(ports <= have, "%s: egress to namespace %s allows %s, not %s"
              % (r.name, ns, sorted(have), sorted(ports)))
    dns = [rule for rule in egress if any(
        peer.get("podSelector", {}).get("matchLabels", {}).get("k8s-app") == "kube-dns"
        and peer.get("namespaceSelector", {}).get("matchLabels", {})
        .get("kubernetes.io/metadata.name") == "kube-system" for peer in rule["to"])]
    check(any({("UDP", 53), ("TCP", 53)} <= _policy_ports(rule) for rule in dns),
          "%s: no egress to kube-dns on 53 UDP and TCP" % r.name)


def check_pdb_hpa(r):
    """The PDB and HPA act on this Deployment's pods; the HPA starts at its
    replicas, and the PDB leaves a node drain room to move one pod."""
    labels = r.pod_labels()
    check(_selects(r.deployment["spec"]["selector"], labels),
          "%s: the Deployment's selector does not match its pods" % r.name)
    pdbs = r.kind("PodDisruptionBudget")
    eq(len(pdbs), 1, "%s: PodDisruptionBudgets" % r.name)
    pdb = pdbs[0]["spec"]
    check(_selects(pdb["selector"], labels), "%s: the PDB does not select the pods" % r.name)
    hpas = r.kind("HorizontalPodAutoscaler")
    eq(len(hpas), 1, "%s: HorizontalPodAutoscalers" % r.name)
    hpa = hpas[0]["spec"]
    ref = hpa["scaleTargetRef"]
    eq((ref.get("kind"), ref.get("name")), ("Deployment", r.deployment["metadata"]["name"]),
       "%s: the HPA's target" % r.name)
    eq(hpa.get("minReplicas"), r.deployment["spec"].get("replicas"),
       "%s: HPA minReplicas against the Deployment's replicas" % r.name)
    check(hpa["maxReplicas"] > hpa["minReplicas"], "%s: the HPA cannot scale" % r.name)
    if "minAvailable" in pdb:
        check(isinstance(pdb["minAvailable"], int) and pdb["minAvailable"] < hpa["minReplicas"],
              "%s: PDB minAvailable %r blocks every drain" % (r.name, pdb["minAvailable"]))
    else:
        check(pdb.get("maxUnavailable") not in (None, 0, "0%"),
              "%s: PDB maxUnavailable %r blocks every drain" % (r.name, pdb.get("maxUnavailable")))


def check_certificates(r):
    """The preview wildcard certificate covers previews.host, and every Issuer
    in the render that issues a wildcard solves it by DNS-01 only."""
    certs = r.kind("Certificate")
    host = r.conf.get("previews", {}).get("host")
    if host:
        m = re.match(r"^[a-z0-9-]*\{name\}[a-z0-9-]*\.(.+)$", host)
        check(m, "%s: previews.host %r has no {name} label" % (r.name, host))
        wild = "*." + m.group(1)
        covering = [c for c in certs if wild in c["spec"].get("dnsNames", [])]
        check(covering, "%s: no Certificate names %s" % (r.name, wild))
        mounted = {v["secret"]["secretName"] for v in r.pod.get("volumes", []) if "secret" in v}
        check(any(c["spec"]["secretName"] in mounted for c in covering),
              "%s: the %s certificate is not mounted" % (r.name, wild))
    for c in certs:
        if not any(n.startswith("*.") for n in c["spec"].get("dnsNames", [])):
            continue
        ref = c["spec"]["issuerRef"]
        issuers = [i for i in r.kind(ref.get("kind", "Issuer"))
                   if i["metadata"]["name"] == ref["name"]]
        for i in issuers:
            solvers = i["spec"].get("acme", {}).get("solvers", [])
            check(solvers and all("dns01" in s and "http01" not in s for s in solvers),
                  "%s: Issuer %s solves the wildcard %s without DNS-01"
                  % (r.name, ref["name"], c["metadata"]["name"]))


CHECKS = (check_config_passes, check_ports_and_probes, check_secrets_mounted,
          check_drain_timings, check_security, check_network_policies, check_pdb_hpa,
          check_certificates)


# ---------------------------------------------------------------- tests

def test_kubernetes_renders_with_its_configuration():
    """Base and example overlay render, and every check above holds on each."""
    for r in _renders():
        for c in CHECKS:
            c(r)
    overlay = render("overlays/example")
    check(overlay.deployment["metadata"].get("namespace"), "the overlay sets no namespace")
    check(overlay.kind("Issuer"), "the example overlay has no Issuer")


def _mutations():
    """(what, check, change) breaking one thing each in a render."""
    def container(r):
        return r.container

    def conf(r, old, new):
        check(old in r.conf_text, "mutation: %r not in flowgate.conf" % old)
        r.conf_text = r.conf_text.replace(old, new, 1)
        r.conf = parse_libconfig(r.conf_text)

    def egress_port(r, port):
        for p in r.kind("NetworkPolicy"):
            for rule in p["spec"].get("egress", []):
                for x in rule.get("ports", []):
                    if x["port"] == port:
                        x["port"] = port + 1

    def admin_open(r):
        for p in r.kind("NetworkPolicy"):
            for rule in p["spec"].get("ingress", []):
                rule.pop("from", None)

    def redis_env(r):
        conf(r, 'password_file = "/etc/flowgate/redis/password"',
             'password_env = "FLOWGATE_REDIS_PASSWORD"')

    def redis_unmounted(r):
        r.container["volumeMounts"] = [m for m in r.container["volumeMounts"]
                                       if m["name"] != "redis"]

    def drop_default_deny(r):
        r.docs = [d for d in r.docs if not (d.get("kind") == "NetworkPolicy"
                                             and d["spec"].get("podSelector") == {})]

    def subpath(r):
        for m in r.container["volumeMounts"]:
            if m["mountPath"].endswith("/jwt"):
                m["subPath"] = "k1"

    def jwt_outside(r):
        conf(r, '"/etc/flowgate/jwt/k1"', '"/var/lib/flowgate/k1"')

    def hpa_target(r):
        r.kind("HorizontalPodAutoscaler")[0]["spec"]["scaleTargetRef"]["name"] = "other"

    def pdb_selector(r):
        r.kind("PodDisruptionBudget")[0]["spec"]["selector"]["matchLabels"] = {"app": "x"}

    def probe_path(r):
        container(r)["readinessProbe"]["httpGet"]["path"] = "/healthz"

    def probe_port(r):
        container(r)["livenessProbe"]["httpGet"]["port"] = "https"

    def admin_loopback(r):
        conf(r, '"0.0.0.0:9901"', '"127.0.0.1:9901"')

    def port_moved(r):
        conf(r, '"0.0.0.0:8443"', '"0.0.0.0:9443"')

    def grace(r):
        r.pod["terminationGracePeriodSeconds"] = 30

    def short_delay(r):
        conf(r, "shutdown_delay_ms = 15000", "shutdown_delay_ms = 5000")

    def svc_target(r):
        r.kind("Service")[0]["spec"]["ports"][0]["targetPort"] = 443

    def redirect_port(r):
        conf(r, "https_port = 443", "https_port = 8443")

    def proxy(r):
        conf(r, "proxy_protocol = false", "proxy_protocol = true")

    def writable_root(r):
        container(r)["securityContext"]["readOnlyRootFilesystem"] = False

    def caps(r):
        container(r)["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]

    def seccomp(r):
        r.pod["securityContext"].pop("seccompProfile")
        container(r)["securityContext"].pop("seccompProfile")

    def root_user(r):
        r.pod["securityContext"]["runAsUser"] = 0

    def workers(r):
        conf(r, "workers = 2", "workers = 0")

    def unknown_key(r):
        conf(r, "workers = 2;", "workers = 2; worker_priority = 1;")

    def no_wildcard(r):
        for c in r.kind("Certificate"):
            c["spec"]["dnsNames"] = [n for n in c["spec"]["dnsNames"] if not n.startswith("*.")]

    def http01(r):
        for i in r.kind("Issuer"):
            i["spec"]["acme"]["solvers"] = [{"http01": {"ingress": {}}}]

    return [
        ("readiness probe on /healthz", check_ports_and_probes, probe_path),
        ("liveness probe on the https port", check_ports_and_probes, probe_port),
        ("admin listener on loopback", check_ports_and_probes, admin_loopback),
        ("https listener moved off the container port", check_ports_and_probes, port_moved),
        ("Service targets a port number", check_ports_and_probes, svc_target),
        ("redirect to a port the Service does not publish", check_ports_and_probes,
         redirect_port),
        ("PROXY protocol without the annotation", check_ports_and_probes, proxy),
        ("JWT Secret mounted with subPath", check_secrets_mounted, subpath),
        ("JWT secret file outside the mounts", check_secrets_mounted, jwt_outside),
        ("Redis password from a variable not given", check_secrets_mounted, redis_env),
        ("Redis password Secret not mounted", check_secrets_mounted, redis_unmounted),
        ("grace period under the drain", check_drain_timings, grace),
        ("delay under the endpoint propagation", check_drain_timings, short_delay),
        ("writable root filesystem", check_security, writable_root),
        ("a capability added", check_security, caps),
        ("no seccomp profile", check_security, seccomp),
        ("runAsUser 0", check_security, root_user),
        ("workers = 0", check_security, workers),
        ("no preStop pause", check_drain_timings,
         lambda r: container(r)["lifecycle"].pop("preStop")),
        ("no default deny", check_network_policies, drop_default_deny),
        ("admin port open to every source", check_network_policies, admin_open),
        ("no Redis egress", check_network_policies, lambda r: egress_port(r, 6379)),
        ("no Sentinel egress", check_network_policies, lambda r: egress_port(r, 26379)),
        ("no DNS egress", check_network_policies, lambda r: egress_port(r, 53)),
        ("no egress to the upstreams", check_network_policies, lambda r: egress_port(r, 8080)),
        ("HPA on another Deployment", check_pdb_hpa, hpa_target),
        ("PDB selecting other pods", check_pdb_hpa, pdb_selector),
        ("no wildcard certificate", check_certificates, no_wildcard),
        ("wildcard by HTTP-01", check_certificates, http01),
        ("an unknown key in flowgate.conf", check_config_passes, unknown_key),
    ]


def test_kubernetes_checks_catch_breakage():
    """Each check fails on a render broken in the one way it looks for."""
    good = render("overlays/example")
    for what, fn, change in _mutations():
        r = copy.deepcopy(good)
        change(r)
        try:
            fn(r)
        except TestFailure:
            continue
        fail("%s: %s did not notice" % (what, fn.__name__))


# ---------------------------------------------------------------- Containerfile

def _stages(text):
    """[(FROM line, [instruction lines])], continuation lines joined."""
    text = re.sub(r"\\\n", " ", re.sub(r"^\s*#[^\n]*\n", "", text, flags=re.M))
    stages = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.upper().startswith("FROM "):
            stages.append((line, []))
        else:
            check(stages, "an instruction before FROM: %r" % line)
            stages[-1][1].append(line)
    return stages


def _apt_packages(instructions):
    pkgs = set()
    for ins in instructions:
        for m in re.finditer(r"apt-get install ((?:\s*-\S+)*)([^&;]*)", ins):
            pkgs |= set(m.group(2).split())
    return pkgs


def _needed_packages(exe):
    """Debian packages of the libraries EXE names (NEEDED), not what they pull
    in: each soname as the loader resolves it (ldd), owned by one package."""
    p = subprocess.run(["readelf", "-d", exe], stdout=subprocess.PIPE, text=True, timeout=30)
    eq(p.returncode, 0, "readelf -d %s" % exe)
    sonames = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", p.stdout)
    check(sonames, "no NEEDED library in %s" % exe)
    p = subprocess.run(["ldd", exe], stdout=subprocess.PIPE, text=True, timeout=30)
    resolved = dict(re.findall(r"^\s*(\S+) => (/\S+)", p.stdout, re.M))
    pkgs = {}
    for so in sonames:
        check(so in resolved, "ldd does not resolve %s: %r" % (so, p.stdout))
        q = subprocess.run(["dpkg", "-S", "*/" + so], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, timeout=30)
        owners = {line.split(":")[0] for line in q.stdout.splitlines()
                  if os.path.realpath(line.split(": ", 1)[1]) == os.path.realpath(resolved[so])}
        eq(len(owners), 1, "packages holding %s (%r)" % (resolved[so], q.stdout))
        pkgs[so] = owners.pop()
    return pkgs


def test_containerfile_builds_in_stages_as_non_root():
    """Two Debian 12 stages; the build stage installs the -dev packages
    tools/deps.sh names and copies only the sources; the final one installs
    the packages of the libraries build/flowgate is linked against (and no
    other), copies the binary alone from the build stage, and runs as the
    numeric, non-zero UID the Deployment runs as."""
    with open(CONTAINERFILE) as f:
        text = f.read()
    stages = _stages(text)
    eq(len(stages), 2, "stages in the Containerfile")
    check(re.match(r"^FROM debian:12-slim AS build$", stages[0][0], re.I),
          "first stage: %r" % stages[0][0])
    check(re.match(r"^FROM debian:12-slim$", stages[1][0], re.I), "final stage: %r"
          % stages[1][0])

    with open(os.path.join(ROOT, "tools", "deps.sh")) as f:
        deps = f.read()
    run_pkgs = re.search(r'^RUN_PKGS="([^"]*)"', deps, re.M).group(1).split()
    dev = {p for p in run_pkgs if p.endswith("-dev")} | {"build-essential", "pkg-config"}
    build = _apt_packages(stages[0][1])
    eq(sorted(dev - build), [], "tools/deps.sh's build packages missing from the build stage")

    for n, (_, body) in enumerate(stages):
        for ins in body:
            m = re.match(r"^(COPY|ADD)\s+(.*)$", ins, re.I)
            if not m:
                continue
            check(m.group(1).upper() == "COPY", "ADD in the Containerfile: %r" % ins)
            words = m.group(2).split()
            flags = [w for w in words if w.startswith("--")]
            srcs = [w for w in words if not w.startswith("--")][:-1]
            if n == 0:
                eq(flags, [], "flags of %r" % ins)
                for s in srcs:
                    check(s.rstrip("/") in ("Makefile", "gateway"),
                          "the build stage copies %s from the context" % s)
            else:
                eq(flags, ["--from=build"], "the final stage copies from the build stage only")
                eq(srcs, ["/src/build/flowgate"], "what the final stage copies")
    check(not re.search(r"(?i)\.(key|pem)\b|certs/|secret", "\n".join(
        ins for _, body in stages for ins in body if re.match(r"(?i)COPY|ADD|RUN", ins))),
          "the Containerfile names a key, a certificate or a secret")

    final = stages[1][1]
    users = [ins.split()[1] for ins in final if ins.upper().startswith("USER ")]
    check(users, "the final stage has no USER")
    uid = users[-1].split(":")[0]
    check(uid.isdigit() and int(uid) != 0, "USER %s is not a numeric non-root UID" % users[-1])
    check(any(re.search(r"useradd\b.*--uid %s\b" % uid, ins) for ins in final),
          "the final stage creates no user with UID %s" % uid)

    exe = os.path.join(ROOT, "build", "flowgate")
    check(os.path.isfile(exe), "%s is missing (make build/flowgate)" % exe)
    needed = _needed_packages(exe)
    runtime = _apt_packages(final)
    eq(sorted(set(needed.values()) - BASE_IMAGE_PACKAGES - runtime), [],
       "packages of linked libraries %s the final stage does not install" % sorted(needed))
    eq(sorted(runtime - set(needed.values())), [],
       "packages the final stage installs that build/flowgate does not link")
    check(not any(p.endswith("-dev") for p in runtime), "a -dev package in the final stage")

    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignore = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    eq(ignore[0], "*", "the first line of .dockerignore (everything out, then the sources in)")
