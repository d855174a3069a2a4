"""What a ModelDeployment may make the operator create: no more than its author could create alone.

Whoever can create a ModelDeployment gets pods created for it by the operator, whose
ServiceAccount can do more than most tenants. Without limits that is a confused deputy: a
tenant who cannot create pods or read Secrets obtains a privileged retraining pod, or a model
server reading a Secret. The same rules are enforced twice:

1. at admission, by the ValidatingAdmissionPolicy ``modelops-tenant-limits``
   (``manifests/base/admission-policy.yaml``): a refused spec is never stored;
2. here, before each write of a pod-carrying child (the model Deployments, the retraining
   Job): defence in depth for a cluster where the policy is missing, unbound or was added after
   the spec was stored. A refused child is not written, and the refusal shows in status
   (Degraded, reason ``PolicyRefused``), naming the field and the rule.

The rules (``Rule`` below; the names are the ones both enforcements print):

- ``restricted``: a pod spec stays within the ``restricted`` Pod Security Standard, as far as a
  Job template can express it: no host namespaces, hostPath or non-restricted volume types,
  privileged containers, added capabilities beyond NET_BIND_SERVICE, privilege escalation,
  root (runAsNonRoot false or runAsUser 0), Unconfined seccomp or AppArmor, custom SELinux
  user/role/type, Windows host processes, unmasked procMount, sysctls or host ports.
- ``service-account``: ``serviceAccountName`` is ``default`` or one listed by the admin in the
  namespace's annotation ``modelops.dev/retraining-service-accounts`` (comma-separated).
- ``secret-refs``: no reference to a Secret (env ``secretKeyRef``, ``envFrom.secretRef``,
  Secret and projected Secret volumes, CSI ``nodePublishSecretRef``, ``imagePullSecrets``)
  unless the admin labelled the namespace ``modelops.dev/allow-secret-refs: "true"``.

Namespace labels and annotations are the admin's to set (tenants get no ``patch namespaces``),
which is why they carry the opt-ins. When the operator cannot read the namespace, the rules
that depend on it refuse (fail closed) and say why.

Every function here is pure and total: the inputs come from tenants, so any JSON value (a
string where a list belongs, nesting, huge lists) gives refusals or nothing, never an exception.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from modelops.api.v1alpha1 import ModelDeploymentSpec

SECRET_REFS_LABEL: Final = "modelops.dev/allow-secret-refs"
SERVICE_ACCOUNTS_ANNOTATION: Final = "modelops.dev/retraining-service-accounts"
DEFAULT_SERVICE_ACCOUNT: Final = "default"
MAX_SERVICE_ACCOUNTS: Final = 64
MAX_REFUSALS: Final = 10  # the first ones are enough to act on; status stays bounded

RESTRICTED: Final = "restricted"
SERVICE_ACCOUNT: Final = "service-account"
SECRET_REFS: Final = "secret-refs"

# Pod Security Standards, restricted profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
RESTRICTED_VOLUME_TYPES: Final = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
ALLOWED_ADDED_CAPABILITIES: Final = frozenset({"NET_BIND_SERVICE"})
ALLOWED_SECCOMP_TYPES: Final = frozenset({"RuntimeDefault", "Localhost"})  # and AppArmor profile types
ALLOWED_SELINUX_TYPES: Final = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
HOST_NAMESPACES: Final = ("hostNetwork", "hostPID", "hostIPC")
CONTAINER_LISTS: Final = ("containers", "initContainers", "ephemeralContainers")
APPARMOR_ANNOTATION_PREFIX: Final = "container.apparmor.security.beta.kubernetes.io/"

RESTRICTED_POD_SECURITY: Final[Mapping[str, Any]] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


@dataclass(frozen=True)
class NamespacePolicy:
    """What the admin allows in one namespace, read from its labels and annotations."""

    namespace: str
    secret_refs_allowed: bool = False
    service_accounts: frozenset[str] = field(default_factory=lambda: frozenset({DEFAULT_SERVICE_ACCOUNT}))
    unreadable: str = ""  # why the namespace could not be read: every rule that needs it refuses

    @classmethod
    def from_namespace(cls, body: Mapping[str, Any]) -> "NamespacePolicy":
        """The admin's limits from a Namespace object; a malformed annotation gives only ``default``.

        >>> limits = NamespacePolicy.from_namespace({"metadata": {"name": "ml",
        ...     "labels": {"modelops.dev/allow-secret-refs": "true"},
        ...     "annotations": {"modelops.dev/retraining-service-accounts": " trainer, ,batch "}}})
        >>> limits.secret_refs_allowed, sorted(limits.service_accounts)
        (True, ['batch', 'default', 'trainer'])
        """
        metadata = body.get("metadata") or {}
        labels = metadata.get("labels") or {}
        listed = str((metadata.get("annotations") or {}).get(SERVICE_ACCOUNTS_ANNOTATION, ""))
        names = [name.strip() for name in listed.split(",")[:MAX_SERVICE_ACCOUNTS]]
        return cls(
            namespace=str(metadata.get("name", "")),
            secret_refs_allowed=labels.get(SECRET_REFS_LABEL) == "true",
            service_accounts=frozenset({DEFAULT_SERVICE_ACCOUNT, *filter(None, names)}),
        )

    @classmethod
    def unknown(cls, namespace: str, why: str) -> "NamespacePolicy":
        """The namespace could not be read: nothing that depends on it is allowed."""
        return cls(namespace=namespace, service_accounts=frozenset(), unreadable=why[:300])


@dataclass(frozen=True)
class Refusal:
    """One broken rule: where (a field path) and why."""

    rule: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (rule {self.rule})"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _one_of(value: Any, allowed: frozenset[str]) -> bool:
    """``value in allowed`` for any JSON value (a list or an object is never allowed, and never raises)."""
    return isinstance(value, str) and value in allowed


def _named(items: list[Any]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for index, item in enumerate(items):
        if isinstance(item, Mapping):
            yield index, item


def _security_refusals(context: Mapping[str, Any], path: str) -> Iterator[Refusal]:
    """Rules shared by the pod's and each container's securityContext."""
    if context.get("runAsNonRoot") is False:
        yield Refusal(RESTRICTED, f"{path}.runAsNonRoot", "must not be false: containers run as a non-root user")
    if context.get("runAsUser") == 0:
        yield Refusal(RESTRICTED, f"{path}.runAsUser", "must not be 0 (root)")
    seccomp = _mapping(context.get("seccompProfile")).get("type")
    if seccomp is not None and not _one_of(seccomp, ALLOWED_SECCOMP_TYPES):
        yield Refusal(RESTRICTED, f"{path}.seccompProfile.type", "must be RuntimeDefault or Localhost")
    apparmor = _mapping(context.get("appArmorProfile")).get("type")
    if apparmor is not None and not _one_of(apparmor, ALLOWED_SECCOMP_TYPES):
        yield Refusal(RESTRICTED, f"{path}.appArmorProfile.type", "must be RuntimeDefault or Localhost")
    selinux = _mapping(context.get("seLinuxOptions"))
    if selinux.get("user") or selinux.get("role") or not _one_of(selinux.get("type", ""), ALLOWED_SELINUX_TYPES):
        yield Refusal(RESTRICTED, f"{path}.seLinuxOptions", "no user or role, and type only container_t and its kin")
    if _mapping(context.get("windowsOptions")).get("hostProcess") is True:
        yield Refusal(RESTRICTED, f"{path}.windowsOptions.hostProcess", "host processes are not allowed")


def _container_refusals(container: Mapping[str, Any], path: str) -> Iterator[Refusal]:
    context = _mapping(container.get("securityContext"))
    context_path = f"{path}.securityContext"
    if context.get("privileged") is True:
        yield Refusal(RESTRICTED, f"{context_path}.privileged", "privileged containers are not allowed")
    if context.get("allowPrivilegeEscalation") is True:
        yield Refusal(RESTRICTED, f"{context_path}.allowPrivilegeEscalation", "must not be true")
    added = _items(_mapping(context.get("capabilities")).get("add"))
    if any(not _one_of(capability, ALLOWED_ADDED_CAPABILITIES) for capability in added):
        yield Refusal(RESTRICTED, f"{context_path}.capabilities.add", "only NET_BIND_SERVICE may be added")
    if context.get("procMount", "Default") != "Default":
        yield Refusal(RESTRICTED, f"{context_path}.procMount", "must be Default")
    yield from _security_refusals(context, context_path)
    for index, port in _named(_items(container.get("ports"))):
        if port.get("hostPort"):
            yield Refusal(RESTRICTED, f"{path}.ports[{index}].hostPort", "host ports are not allowed")


def _restricted_refusals(pod: Mapping[str, Any], annotations: Mapping[str, Any], path: str) -> Iterator[Refusal]:
    for name in HOST_NAMESPACES:
        if pod.get(name) is True:
            yield Refusal(RESTRICTED, f"{path}.{name}", "host namespaces are not allowed")
    for index, volume in _named(_items(pod.get("volumes"))):
        if "hostPath" in volume:
            yield Refusal(RESTRICTED, f"{path}.volumes[{index}].hostPath", "hostPath volumes are not allowed")
        elif any(key != "name" and key not in RESTRICTED_VOLUME_TYPES for key in volume):
            yield Refusal(RESTRICTED, f"{path}.volumes[{index}]", f"only {', '.join(sorted(RESTRICTED_VOLUME_TYPES))} volumes")
    context = _mapping(pod.get("securityContext"))
    yield from _security_refusals(context, f"{path}.securityContext")
    if _items(context.get("sysctls")):
        yield Refusal(RESTRICTED, f"{path}.securityContext.sysctls", "sysctls are not allowed")
    for lists in CONTAINER_LISTS:
        for index, container in _named(_items(pod.get(lists))):
            yield from _container_refusals(container, f"{path}.{lists}[{index}]")
    if any(str(key).startswith(APPARMOR_ANNOTATION_PREFIX) and value == "unconfined" for key, value in annotations.items()):
        yield Refusal(RESTRICTED, f"{path} annotations", "AppArmor must not be unconfined")


def _secret_references(pod: Mapping[str, Any], path: str) -> Iterator[str]:
    """The field paths of every Secret the pod refers to."""
    for lists in CONTAINER_LISTS:
        for index, container in _named(_items(pod.get(lists))):
            for position, variable in _named(_items(container.get("env"))):
                if "secretKeyRef" in _mapping(variable.get("valueFrom")):
                    yield f"{path}.{lists}[{index}].env[{position}].valueFrom.secretKeyRef"
            for position, source in _named(_items(container.get("envFrom"))):
                if "secretRef" in source:
                    yield f"{path}.{lists}[{index}].envFrom[{position}].secretRef"
    for index, volume in _named(_items(pod.get("volumes"))):
        if "secret" in volume:
            yield f"{path}.volumes[{index}].secret"
        if "nodePublishSecretRef" in _mapping(volume.get("csi")):
            yield f"{path}.volumes[{index}].csi.nodePublishSecretRef"
        for position, source in _named(_items(_mapping(volume.get("projected")).get("sources"))):
            if "secret" in source:
                yield f"{path}.volumes[{index}].projected.sources[{position}].secret"
    if _items(pod.get("imagePullSecrets")):
        yield f"{path}.imagePullSecrets"


def _namespace_refusals(pod: Mapping[str, Any], policy: NamespacePolicy, path: str) -> Iterator[Refusal]:
    where = f"namespace {policy.namespace}"
    unknown = f" (cannot read {where}: {policy.unreadable})" if policy.unreadable else ""
    for key in ("serviceAccountName", "serviceAccount"):
        account = pod.get(key)
        if account is not None and not _one_of(account, policy.service_accounts):
            allowed = ", ".join(sorted(policy.service_accounts)) or "none"
            yield Refusal(SERVICE_ACCOUNT, f"{path}.{key}", f"{str(account)[:253]!r} is not allowed in {where} "
                          f"(allowed: {allowed}; admins list more in the annotation {SERVICE_ACCOUNTS_ANNOTATION}){unknown}")
    if not policy.secret_refs_allowed:
        for reference in _secret_references(pod, path):
            yield Refusal(SECRET_REFS, reference, f"Secret references need the label {SECRET_REFS_LABEL}=\"true\" on {where}"
                          f"{unknown}")


def pod_refusals(pod: Any, policy: NamespacePolicy, path: str, annotations: Any = None) -> list[Refusal]:
    """Every rule the pod spec ``pod`` breaks (at most ``MAX_REFUSALS``); ``path`` names it in the messages.

    >>> pod_refusals({"hostNetwork": True, "containers": [{"name": "x", "securityContext": {"privileged": True}}]},
    ...              NamespacePolicy("ml"), "spec")  # doctest: +NORMALIZE_WHITESPACE
    [Refusal(rule='restricted', field='spec.hostNetwork', message='host namespaces are not allowed'),
     Refusal(rule='restricted', field='spec.containers[0].securityContext.privileged', message='privileged containers are not allowed')]
    """
    spec = _mapping(pod)
    found: list[Refusal] = []
    for refusal in [*_restricted_refusals(spec, _mapping(annotations), path), *_namespace_refusals(spec, policy, path)]:
        if len(found) == MAX_REFUSALS:
            break
        found.append(refusal)
    return found


def manifest_refusals(manifest: Mapping[str, Any], policy: NamespacePolicy) -> list[Refusal]:
    """The refusals of a child that carries a pod template (Deployment, Job); none for other kinds."""
    if manifest.get("kind") not in ("Deployment", "Job"):
        return []
    template = _mapping(_mapping(manifest.get("spec")).get("template"))
    label = f"{manifest['kind']} {_mapping(manifest.get('metadata')).get('name', '')}"
    return pod_refusals(template.get("spec"), policy, f"{label}: spec.template.spec",
                        _mapping(template.get("metadata")).get("annotations"))


def job_template_refusals(spec: ModelDeploymentSpec, policy: NamespacePolicy) -> list[Refusal]:
    """The refusals of ``spec.retraining.jobTemplate`` as the tenant wrote it."""
    if spec.retraining is None:
        return []
    template = _mapping(spec.retraining.job_template.get("template"))
    return pod_refusals(template.get("spec"), policy, "spec.retraining.jobTemplate.template.spec",
                        _mapping(template.get("metadata")).get("annotations"))


def runtime_refusals(spec: ModelDeploymentSpec, policy: NamespacePolicy) -> list[Refusal]:
    """The refusals of ``spec.runtime`` (the model server): only Secret references can break a rule there."""
    if policy.secret_refs_allowed:
        return []
    unknown = f" (cannot read namespace {policy.namespace}: {policy.unreadable})" if policy.unreadable else ""
    return [
        Refusal(SECRET_REFS, f"spec.runtime.env[{index}].valueFrom.secretKeyRef",
                f"Secret references need the label {SECRET_REFS_LABEL}=\"true\" on namespace {policy.namespace}{unknown}")
        for index, variable in enumerate(spec.runtime.env)
        if variable.value_from is not None and variable.value_from.secret_key_ref is not None
    ][:MAX_REFUSALS]


def spec_refusals(spec: ModelDeploymentSpec, policy: NamespacePolicy) -> list[Refusal]:
    """Every rule the spec breaks: what the admission policy would have refused."""
    return [*runtime_refusals(spec, policy), *job_template_refusals(spec, policy)][:MAX_REFUSALS]


def needs_namespace(spec: ModelDeploymentSpec) -> bool:
    """Whether deciding the rules needs the namespace's labels and annotations (otherwise the
    operator does not read it: the most restrictive policy gives the same answer)."""
    strictest = NamespacePolicy("")
    return any(refusal.rule != RESTRICTED for refusal in spec_refusals(spec, strictest))


def with_restricted_defaults(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod spec with the restricted securityContext filled in where the template leaves it open.

    Set only where unset (a value the template sets is either as strict or refused by the
    rules above); capabilities always drop ALL (adding to a drop list never loosens it).

    >>> with_restricted_defaults({"containers": [{"name": "t", "securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}]})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'containers': [{'name': 't', 'securityContext': {'capabilities': {'drop': ['NET_RAW', 'ALL']},
        'allowPrivilegeEscalation': False}}],
     'securityContext': {'runAsNonRoot': True, 'seccompProfile': {'type': 'RuntimeDefault'}}}
    """
    context = pod.setdefault("securityContext", {})
    if isinstance(context, dict):
        for key, value in RESTRICTED_POD_SECURITY.items():
            context.setdefault(key, dict(value) if isinstance(value, Mapping) else value)
    for lists in CONTAINER_LISTS:
        for container in _items(pod.get(lists)):
            if not isinstance(container, dict):
                continue
            security = container.setdefault("securityContext", {})
            if not isinstance(security, dict):
                continue
            capabilities = security.setdefault("capabilities", {})
            if isinstance(capabilities, dict):
                drop = capabilities.setdefault("drop", [])
                if isinstance(drop, list) and "ALL" not in drop:
                    drop.append("ALL")
            security.setdefault("allowPrivilegeEscalation", False)
    return pod
