"""The ModelDeployment API, version ``modelops.dev/v1alpha1``: the single source of truth.

The CRD in ``crds/`` is generated from these models (``modelops crd``), and a test
fails when the committed file is stale. Field docstrings become the schema's
descriptions, so ``kubectl explain modeldeployment.spec.model`` reads them.

Validation lives here as schema constraints (types, enums, bounds, patterns,
``maxItems``/``maxLength`` on every list and string) and as CEL rules
(``x-kubernetes-validations``) for cross-field rules, so the apiserver refuses bad
input at admission, before anything is stored. The same constraints hold when
the operator parses an object with pydantic.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from modelops.api.timestamps import Timestamp

GROUP = "modelops.dev"
VERSION = "v1alpha1"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]
API_VERSION = f"{GROUP}/{VERSION}"

# A ModelDeployment's name prefixes every child (Deployment, Service, HPA) and must leave
# room for a version slug within the 63-character limit of a Service name (DNS-1035 label).
MAX_NAME_LENGTH = 40
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A model version is also a Kubernetes label value: at most 63 characters, alphanumerics
# at both ends, and '-', '_' or '.' inside (so semver build metadata "+..." is not allowed).
VERSION_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
URI_PATTERN = r"^(s3|gs|az|https?|file|oci|pvc|hf)://[^\s]+$"
DIGEST_PATTERN = r"^sha256:[a-f0-9]{64}$"
IMAGE_PATTERN = r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
RESERVED_ENV_NAMES = ("MODEL_NAME", "MODEL_VERSION", "MODEL_URI", "MODEL_DIGEST", "MODELOPS_TRACK")
MAX_REPLICAS = 1000

ShortText = Annotated[str, StringConstraints(max_length=1024)]


class ApiModel(BaseModel):
    """Base: camelCase names in YAML, unknown fields refused, docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        frozen=True,
    )


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


class ModelSpec(ApiModel):
    """The model artifact. Its version is the revision's identity."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.version != oldSelf.version || (self.uri == oldSelf.uri && "
                    "(has(self.digest) == has(oldSelf.digest)) && (!has(self.digest) || self.digest == oldSelf.digest))",
                    "a released model version is immutable: to change model.uri or model.digest, also change "
                    "model.version",
                )
            ]
        }
    )

    version: str = Field(min_length=1, max_length=63, pattern=VERSION_PATTERN)
    """The model version, for example "2.1.0". A change starts a new rollout. Up to 63 characters:
    letters, digits, '.', '_' and '-', beginning and ending with a letter or digit (it is also a label value)."""

    uri: str = Field(max_length=2048, pattern=URI_PATTERN)
    """Where the artifact is, handed to the runtime as MODEL_URI (s3://, gs://, az://, http(s)://, file://, oci://,
    pvc:// or hf://)."""

    digest: str | None = Field(default=None, max_length=71, pattern=DIGEST_PATTERN)
    """Optional "sha256:<64 hex>" of the artifact, handed to the runtime as MODEL_DIGEST. The runtime must refuse an
    artifact whose digest differs."""

    format: Literal["sklearn", "xgboost", "lightgbm", "onnx", "pytorch", "tensorflow", "mlflow", "custom"] = "custom"
    """The artifact's format, handed to the runtime as MODEL_FORMAT."""


class KeySelector(ApiModel):
    """A key of a Secret or ConfigMap in the ModelDeployment's namespace."""

    name: str = Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Name of the Secret or ConfigMap."""

    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """The key within it."""


class EnvSource(ApiModel):
    """Where an environment variable's value comes from (exactly one)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.secretKeyRef) != has(self.configMapKeyRef)",
                    "valueFrom needs exactly one of secretKeyRef and configMapKeyRef",
                )
            ]
        }
    )

    secret_key_ref: KeySelector | None = None
    """A key of a Secret."""

    config_map_key_ref: KeySelector | None = None
    """A key of a ConfigMap."""


class EnvVar(ApiModel):
    """An environment variable of the model server container."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both")
            ]
        }
    )

    name: str = Field(min_length=1, max_length=128, pattern=ENV_NAME_PATTERN)
    """Variable name. MODEL_NAME, MODEL_VERSION, MODEL_URI, MODEL_DIGEST and MODELOPS_TRACK are set by the
    operator and cannot be overridden."""

    value: str | None = Field(default=None, max_length=4096)
    """A literal value."""

    value_from: EnvSource | None = None
    """A value read from a Secret or ConfigMap key."""


Quantity = Annotated[str, StringConstraints(max_length=32, pattern=QUANTITY_PATTERN)]


class ResourceList(ApiModel):
    """CPU and memory quantities, in Kubernetes notation ("500m", "2", "1Gi")."""

    cpu: Quantity | None = None
    """CPU, for example "500m" or "2"."""

    memory: Quantity | None = None
    """Memory, for example "512Mi" or "2Gi"."""


class Resources(ApiModel):
    """Compute resources of the model server container."""

    requests: ResourceList | None = None
    """What the scheduler reserves. CPU requests are what a CPU utilization target is measured against."""

    limits: ResourceList | None = None
    """The most the container may use."""


class RuntimeSpec(ApiModel):
    """The model server that loads and serves the artifact."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.imagePolicy != 'RequireDigest' || self.image.contains('@sha256:')",
                    "imagePolicy RequireDigest needs an image pinned by digest (name@sha256:<64 hex>)",
                    ".image",
                ),
                cel(
                    "!has(self.env) || self.env.all(e, !(e.name in "
                    + "[" + ", ".join(f"'{name}'" for name in RESERVED_ENV_NAMES) + "]))",
                    "env may not set MODEL_NAME, MODEL_VERSION, MODEL_URI, MODEL_DIGEST or MODELOPS_TRACK: the "
                    "operator sets them from spec.model",
                    ".env",
                ),
            ]
        }
    )

    image: str = Field(min_length=1, max_length=512, pattern=IMAGE_PATTERN)
    """The container image, preferably pinned by digest (registry/name@sha256:...)."""

    image_policy: Literal["AllowTags", "RequireDigest"] = "AllowTags"
    """RequireDigest refuses images that are not pinned by digest, so a release always runs the same bytes."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """When the kubelet pulls the image."""

    port: int = Field(default=8080, ge=1, le=65535)
    """The HTTP port the server listens on (Open Inference Protocol: /v2/health/live, /v2/models/<name>/ready)."""

    command: list[ShortText] | None = Field(default=None, max_length=32)
    """Overrides the image's entrypoint."""

    args: list[ShortText] = Field(default_factory=list, max_length=64)
    """Arguments to the server."""

    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    """Extra environment variables."""

    resources: Resources = Field(default_factory=Resources)
    """CPU and memory requests and limits."""


class ScalingSpec(ApiModel):
    """How many replicas each version runs: a fixed count, or autoscaled by an HPA between min and max."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.replicas) && has(self.maxReplicas))",
                    "set either replicas (a fixed count) or minReplicas/maxReplicas (autoscaling), not both",
                ),
                cel(
                    "!has(self.maxReplicas) || !has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
                    "minReplicas must be less than or equal to maxReplicas",
                    ".minReplicas",
                ),
                cel(
                    "has(self.maxReplicas) || !(has(self.minReplicas) || has(self.targetCPUUtilizationPercentage) "
                    "|| has(self.metrics) || has(self.behavior))",
                    "minReplicas, targetCPUUtilizationPercentage, metrics and behavior need maxReplicas (autoscaling)",
                ),
            ]
        }
    )

    replicas: int | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    """A fixed replica count (default 1 when maxReplicas is not set)."""

    min_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    """Autoscaling lower bound (default 1)."""

    max_replicas: int | None = Field(default=None, ge=1, le=MAX_REPLICAS)
    """Autoscaling upper bound. Setting it creates a HorizontalPodAutoscaler per version, and the operator then never
    writes replicas."""

    target_cpu_utilization_percentage: int | None = Field(
        default=None, ge=1, le=100, alias="targetCPUUtilizationPercentage"
    )
    """Average CPU utilization target, as a percentage of the CPU request (default 80 when no metrics are given)."""

    metrics: list[dict[str, Any]] | None = Field(default=None, max_length=8)
    """autoscaling/v2 MetricSpec entries, passed to the HPA as they are."""

    behavior: dict[str, Any] | None = None
    """autoscaling/v2 HorizontalPodAutoscalerBehavior, passed to the HPA as it is."""

    @property
    def autoscaled(self) -> bool:
        return self.max_replicas is not None


DURATION_PATTERN = r"^([0-9]{1,5}(ms|s|m|h))+$"
Duration = Annotated[str, StringConstraints(max_length=24, pattern=DURATION_PATTERN)]
CHECK_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"
LABEL_TEXT_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


def duration_seconds(text: str) -> float:
    """Seconds in a Go-style duration such as "1m30s" or "500ms".

    >>> duration_seconds("1m30s"), duration_seconds("500ms"), duration_seconds("2h")
    (90.0, 0.5, 7200.0)
    """
    import re

    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"([0-9]+)(ms|s|m|h)", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use for example 30s, 5m, 1h30m)")
    return sum(int(number) * units[unit] for number, unit in parts)


class PauseStep(ApiModel):
    """Wait at the current weight."""

    duration: Duration | None = None
    """How long to wait, for example "2m". Without a duration the rollout waits until `modelops promote` or
    `modelops resume`."""


class Step(ApiModel):
    """One step of a canary rollout: set a traffic weight, or pause. Exactly one of the two."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("has(self.setWeight) != has(self.pause)", "each step sets exactly one of setWeight and pause")
            ]
        }
    )

    set_weight: int | None = Field(default=None, ge=0, le=100)
    """Percentage of traffic to send to the canary (0-100)."""

    pause: PauseStep | None = None
    """Wait before the next step (analysis keeps running)."""


class ParentReference(ApiModel):
    """A Gateway API parentRef: the Gateway the HTTPRoute attaches to."""

    name: str = Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """Gateway name."""

    namespace: str | None = Field(default=None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Gateway namespace (default: the ModelDeployment's)."""

    section_name: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """A listener of the Gateway."""


class GatewayRouterSpec(ApiModel):
    """An HTTPRoute the operator creates and owns, splitting traffic between the per-version Services."""

    parent_refs: list[ParentReference] = Field(min_length=1, max_length=8)
    """Gateways to attach to."""

    hostnames: list[Annotated[str, StringConstraints(max_length=253, pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]] = Field(
        default_factory=list, max_length=16
    )
    """Host names the route answers for."""


class RouterSpec(ApiModel):
    """How traffic is split between stable and canary."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.type != 'gatewayAPI' || has(self.gatewayAPI)",
                    "router type gatewayAPI needs router.gatewayAPI.parentRefs",
                )
            ]
        }
    )

    type: Literal["replicas", "gatewayAPI"] = "replicas"
    """replicas: the entry Service selects both versions and replica counts set the split (no mesh needed).
    gatewayAPI: an owned HTTPRoute with weighted backendRefs."""

    gateway_api: GatewayRouterSpec | None = Field(default=None, alias="gatewayAPI")
    """Settings of the gatewayAPI router."""


CheckType = Literal["latencyP99", "errorRate", "requestRate", "featureDrift", "fairnessGap", "template"]


class Check(ApiModel):
    """A metric check. The operator builds its PromQL from the metrics contract (docs/metrics.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.max) || has(self.min) || has(self.maxRatioToStable)",
                    "a check needs max, min or maxRatioToStable",
                ),
                cel("!has(self.max) || !has(self.min) || self.min <= self.max", "min must not exceed max"),
                cel("self.type != 'fairnessGap' || has(self.attribute)", "a fairnessGap check needs attribute"),
                cel(
                    "(self.type == 'template') == has(self.template)",
                    "a check of type template needs template (a ClusterMetricTemplate name), and only it may have one",
                ),
            ]
        }
    )

    name: str = Field(max_length=63, pattern=CHECK_NAME_PATTERN)
    """Name shown in status and events."""

    type: CheckType
    """latencyP99 (seconds), errorRate (0-1), requestRate (per second), featureDrift (PSI, higher is more drift),
    fairnessGap (demographic parity difference, 0-1), or template (the query of a ClusterMetricTemplate)."""

    template: str | None = Field(default=None, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """type template: the name of a ClusterMetricTemplate (cluster-scoped; admins own the PromQL)."""

    max: float | None = Field(default=None, ge=0)
    """Fail above this value."""

    min: float | None = Field(default=None, ge=0)
    """Fail below this value."""

    max_ratio_to_stable: float | None = Field(default=None, gt=0, le=100)
    """Fail when the canary's value exceeds the stable version's value over the same window times this ratio
    (for example 1.2)."""

    window: Duration = "1m"
    """The range the metric is computed over (at least 4 scrape intervals)."""

    min_sample_count: int = Field(default=100, ge=0, le=10_000_000)
    """Fewer requests (or drift samples, or requests per group) than this in the window is NoData, never Pass."""

    feature: str | None = Field(default=None, max_length=128, pattern=LABEL_TEXT_PATTERN)
    """featureDrift: one feature (default: the worst feature)."""

    attribute: str | None = Field(default=None, max_length=128, pattern=LABEL_TEXT_PATTERN)
    """fairnessGap: the sensitive attribute whose groups are compared."""


class AnalysisSpec(ApiModel):
    """When and how canary metrics are judged."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("duration(self.interval) >= duration('10s')", "analysis.interval must be at least 10s", ".interval"),
                cel(
                    "self.checks.all(a, self.checks.exists_one(b, a.name == b.name))",
                    "check names must be unique",
                    ".checks",
                ),
            ]
        }
    )

    interval: Duration = "1m"
    """How often checks run while a canary is live (at least 10s)."""

    failure_limit: int = Field(default=0, ge=0, le=100)
    """Failed checks tolerated per revision; one more rolls the canary back."""

    consecutive_error_limit: int = Field(default=4, ge=1, le=100)
    """Consecutive query errors before the rollout reports MetricsUnavailable (it holds; it never passes)."""

    checks: list[Check] = Field(default_factory=list, max_length=10)
    """The checks; every one must pass at least once in each step."""


class RolloutSpec(ApiModel):
    """How a new revision reaches production."""

    router: RouterSpec = Field(default_factory=RouterSpec)
    """How traffic is split."""

    steps: list[Step] = Field(default_factory=list, max_length=20)
    """Canary steps. Empty: a new version replaces stable once all its replicas are Ready."""

    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    """Metric checks that gate every step."""

    progress_deadline: Duration = "10m"
    """A canary that makes no progress for this long is rolled back (NoData and errors hold until then)."""

    scale_down_delay: Duration = "30s"
    """After a promotion the previous stable keeps running this long, so a rollback is instant."""

    abort_scale_down_delay: Duration = "30s"
    """After a rollback the canary keeps running this long before it is removed."""

    paused: bool = False
    """Hold the rollout where it is."""

    skip_analysis: bool = False
    """Emergency switch: advance without judging checks."""


TEMPLATE_PLACEHOLDERS = ("namespace", "model", "version")


PLACEHOLDER_AFTER_OTHER_THAN_EQUALS = r'(^|[^=\s])\s*"\{\{'
"""RE2: a quoted placeholder whose preceding non-space character is not ``=`` (so ``=~``, ``!~``, a comment...)."""
NAMESPACE_SELECTED = r'(^|[^a-zA-Z0-9_])namespace\s*=\s*"\{\{namespace\}\}"'
"""RE2: the matcher ``namespace="{{namespace}}"`` (equality on the label ``namespace`` itself)."""


class ClusterMetricTemplateSpec(ApiModel):
    """A PromQL query that admins own, for checks of type template."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.query.replace('\"{{namespace}}\"', '').replace('\"{{model}}\"', '')"
                    ".replace('\"{{version}}\"', '').contains('{{')",
                    'placeholders are {{namespace}}, {{model}} and {{version}}, each only as a quoted label value: '
                    'label="{{model}}"',
                    ".query",
                ),
                # The character before a placeholder (whitespace aside) must be the "=" of = or !=: that
                # refuses =~ and !~ however spaced, and a comment between operator and value.
                cel(
                    "!self.query.matches(r'" + PLACEHOLDER_AFTER_OTHER_THAN_EQUALS + "')",
                    "placeholders may only be used with = or !=, never in a regular expression (=~ or !~)",
                    ".query",
                ),
                cel(
                    "self.query.matches(r'" + NAMESPACE_SELECTED + "')",
                    'the query must select the namespace: namespace="{{namespace}}" (a template without it can read '
                    "another team's series)",
                    ".query",
                ),
            ]
        }
    )

    query: str = Field(min_length=1, max_length=4096)
    """PromQL returning one sample for the version, for example
    sum(rate(my_errors_total{namespace="{{namespace}}", model="{{model}}", version="{{version}}"}[2m])).
    An empty result is NoData; several series are an Error."""

    description: str | None = Field(default=None, max_length=1024)
    """What the query measures."""


class ClusterMetricTemplate(ApiModel):
    """Cluster-scoped PromQL for canary checks. Only admins create these; ModelDeployments refer to them by name,
    so an application team cannot write a query that always passes."""

    model_config = ConfigDict(extra="ignore")

    spec: ClusterMetricTemplateSpec
    """The query."""


class MonitoringCheck(Check):
    """A check on the stable version, with a sustained-breach duration and an action."""

    for_: Duration = Field(default="5m", alias="for")
    """How long the check must keep failing before its action is taken."""

    action: Literal["retrain", "rollback", "alert"] = "alert"
    """retrain: start a retraining Job (spec.retraining). rollback: within rollbackWindow after a promotion, restore
    the previous stable and block the new revision. alert: a condition and a Warning event only."""


class MonitoringSpec(ApiModel):
    """Continuous checks of the stable version (drift, fairness, latency, errors)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("duration(self.interval) >= duration('10s')", "monitoring.interval must be at least 10s", ".interval"),
                cel(
                    "self.checks.all(c, !has(c.maxRatioToStable))",
                    "monitoring checks judge the stable version alone: use max or min, not maxRatioToStable",
                    ".checks",
                ),
                cel(
                    "self.checks.all(a, self.checks.exists_one(b, a.name == b.name))", "check names must be unique", ".checks"
                ),
            ]
        }
    )

    interval: Duration = "1m"
    """How often the checks run."""

    checks: list[MonitoringCheck] = Field(default_factory=list, max_length=10)
    """The checks."""

    rollback_window: Duration = "30m"
    """After a promotion, how long the previous stable is kept running so that a rollback action can restore it."""


NOTIFY_SECRET = "modelops-notify"


class NotifySecretKeyRef(ApiModel):
    """A key of the namespace's Secret ``modelops-notify``, the only Secret the operator may read."""

    name: str = Field(max_length=253, pattern=f"^{NOTIFY_SECRET}$")
    """Always "modelops-notify": the operator's RBAC grants `get` on Secrets of that name only (resourceNames), so it
    can read no other Secret of any namespace."""

    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """The key holding the URL."""


class NotifyUrlSource(ApiModel):
    """Where the URL comes from."""

    secret_key_ref: NotifySecretKeyRef
    """A key of the Secret modelops-notify in the ModelDeployment's namespace."""


class NotifySpec(ApiModel):
    """Where to announce a retraining candidate (for example a GitOps bot that opens a pull request). The URL is
    never logged (scheme and host only), never put in status or events, redirects are not followed, and the
    operator's --notify-allowed-hosts restricts where it may go."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [cel("has(self.url) != has(self.urlFrom)", "notify needs exactly one of url and urlFrom")]
        }
    )

    url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s]+$")
    """The candidate is POSTed here as JSON (a total deadline per attempt, 3 attempts). Slack-style URLs are
    credentials: prefer urlFrom."""

    url_from: NotifyUrlSource | None = None
    """The URL, from a key of the namespace's Secret modelops-notify."""


class RetrainingSpec(ApiModel):
    """Retraining Jobs started by a monitoring breach or by `modelops retrain`."""

    job_template: dict[str, Any]
    """A batch/v1 JobSpec. The operator adds env MODELOPS_MODEL_NAME, MODELOPS_CURRENT_VERSION, MODELOPS_CURRENT_URI,
    MODELOPS_TRIGGER and MODELOPS_DRIFTING_FEATURES to every container. The Job reports its candidate as JSON
    ({"version", "uri", "digest", "metrics"}) in its termination message."""

    cooldown: Duration = "6h"
    """Minimum time between the starts of two retraining runs."""

    active_deadline_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    """Default activeDeadlineSeconds of the Job (a hung Job fails after this)."""

    backoff_limit: int = Field(default=1, ge=0, le=10)
    """Default backoffLimit of the Job."""

    notify: NotifySpec | None = None
    """Announce each candidate."""


class ModelDeploymentSpec(ApiModel):
    """What to serve and how."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.monitoring) || !self.monitoring.checks.exists(c, c.action == 'retrain') || has(self.retraining)",
                    "a monitoring check with action retrain needs spec.retraining",
                    ".monitoring",
                )
            ]
        }
    )

    model: ModelSpec
    """The model artifact and its version."""

    runtime: RuntimeSpec
    """The model server image and its settings."""

    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    """Replica count or autoscaling, applied to each version independently."""

    revision_history_limit: int = Field(default=3, ge=0, le=20)
    """How many past revisions status.history keeps."""

    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    """Canary steps, traffic router and analysis for new revisions."""

    monitoring: MonitoringSpec | None = None
    """Continuous checks of the stable version, with actions."""

    retraining: RetrainingSpec | None = None
    """Retraining Jobs (needed by monitoring checks with action retrain)."""


ConditionStatus = Literal["True", "False", "Unknown"]
Phase = Literal["Pending", "Progressing", "Healthy", "Degraded", "Paused"]
Track = Literal["stable", "canary"]
Outcome = Literal["Promoted", "RolledBack", "Superseded", "Aborted"]


class StatusModel(ApiModel):
    """Base of status types: written by the operator only, so unknown fields are ignored, not refused."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Condition(StatusModel):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(max_length=316)
    """Ready, Progressing or Degraded."""

    status: ConditionStatus
    """True, False or Unknown."""

    reason: str = Field(max_length=1024)
    """A CamelCase reason."""

    message: str = Field(default="", max_length=32768)
    """A human-readable explanation."""

    last_transition_time: Timestamp = Field(max_length=64)
    """When status last changed."""

    observed_generation: int | None = None
    """The .metadata.generation the condition was computed for."""


class VersionStatus(StatusModel):
    """A version that is serving."""

    version: str = Field(max_length=63)
    """The model version."""

    deployment: str = Field(max_length=63)
    """The versioned Deployment (and Service, and HPA) name."""

    replicas: int = 0
    """Replicas the Deployment wants."""

    ready_replicas: int = 0
    """Replicas that are Ready."""

    weight: int | None = Field(default=None, ge=0, le=100)
    """Percentage of traffic this version receives."""


class HistoryEntry(StatusModel):
    """What happened to one revision."""

    version: str = Field(max_length=63)
    """The model version."""

    outcome: Outcome
    """Promoted, RolledBack, Superseded or Aborted."""

    at: Timestamp = Field(max_length=64)
    """When (RFC 3339)."""

    reason: str = Field(default="", max_length=1024)
    """Why."""


Verdict = Literal["Pass", "Fail", "NoData", "Error"]


class Measurement(StatusModel):
    """One evaluation of a check."""

    at: Timestamp = Field(max_length=64)
    """When (RFC 3339)."""

    value: float | None = None
    """The canary's value (absent for NoData and Error)."""

    verdict: Verdict
    """Pass, Fail, NoData or Error."""


class CheckStatus(StatusModel):
    """The latest evaluation of one check, with the query that produced it."""

    name: str = Field(max_length=63)
    """The check's name."""

    type: str = Field(max_length=32)
    """The check's type."""

    query: str = Field(default="", max_length=4096)
    """The PromQL the operator ran (grouped by namespace, model and version)."""

    value: float | None = None
    """The canary's last value."""

    stable_value: float | None = None
    """The stable version's value over the same window (relative checks)."""

    threshold: str = Field(default="", max_length=256)
    """The rule, for example "<= 0.25" or "<= 1.2 x stable"."""

    verdict: Verdict | None = None
    """The last verdict."""

    reason: str = Field(default="", max_length=512)
    """Why, for NoData and Error."""

    at: Timestamp | None = Field(default=None, max_length=64)
    """When it was last evaluated."""

    passed_in_step: bool = False
    """Whether it has passed at least once in the current step."""

    measurements: list[Measurement] = Field(default_factory=list, max_length=10)
    """The last few evaluations, oldest first."""


class RolloutStatus(StatusModel):
    """Where the canary of one revision stands; all of it survives an operator restart."""

    revision: str = Field(max_length=63)
    """The version being rolled out."""

    step: int = 0
    """Index of the current step in spec.rollout.steps."""

    step_started_at: Timestamp = Field(max_length=64)
    """When the current step started."""

    weight: int = Field(default=0, ge=0, le=100)
    """Traffic the canary should receive, percent."""

    failures: int = 0
    """Failed checks in this revision."""

    consecutive_errors: int = 0
    """Query errors in a row."""

    last_progress_at: Timestamp = Field(max_length=64)
    """When the rollout last moved forward (the progress deadline counts from here, minus time held)."""

    held_since: Timestamp | None = Field(default=None, max_length=64)
    """Since when the progress-deadline clock is stopped (a pause, a manual gate, or a hold that is not the
    canary's doing); absent while it runs."""

    next_analysis_at: Timestamp | None = Field(default=None, max_length=64)
    """When the checks run next."""

    paused_by_user: bool = False
    """Paused with `modelops pause`."""

    checks: list[CheckStatus] = Field(default_factory=list, max_length=10)
    """Every check's last result."""


class BlockedRevision(StatusModel):
    """A revision that was rolled back: it is not retried until the spec names another version or someone runs
    `modelops retry`."""

    version: str = Field(max_length=63)
    """The blocked version."""

    reason: str = Field(max_length=1024)
    """Why it was rolled back."""

    at: Timestamp = Field(max_length=64)
    """When."""


class PreviousStable(StatusModel):
    """The version that was stable before the last promotion, kept running for an instant rollback."""

    version: str = Field(max_length=63)
    """The previous version."""

    deployment: str = Field(max_length=63)
    """Its Deployment."""

    scale_down_at: Timestamp = Field(max_length=64)
    """When it is removed."""


class HandledActions(StatusModel):
    """Timestamps of the manual actions (annotations modelops.dev/action.<name>) already carried out."""

    promote: str | None = Field(default=None, max_length=64)
    abort: str | None = Field(default=None, max_length=64)
    retry: str | None = Field(default=None, max_length=64)
    pause: str | None = Field(default=None, max_length=64)
    resume: str | None = Field(default=None, max_length=64)
    retrain: str | None = Field(default=None, max_length=64)


class MonitorStatus(StatusModel):
    """The latest evaluation of a monitoring check on the stable version."""

    name: str = Field(max_length=63)
    """The check's name."""

    verdict: Verdict | None = None
    """Pass, Fail, NoData or Error."""

    value: float | None = None
    """The last value."""

    reason: str = Field(default="", max_length=512)
    """Why, for Fail, NoData and Error."""

    at: Timestamp | None = Field(default=None, max_length=64)
    """When it was last evaluated."""

    breaching_since: Timestamp | None = Field(default=None, max_length=64)
    """When the current run of failures began."""

    alerted_at: Timestamp | None = Field(default=None, max_length=64)
    """When this breach's alert was raised (an alert fires once per breach)."""


class MonitoringStatus(StatusModel):
    """Continuous monitoring of the stable version."""

    version: str = Field(default="", max_length=63)
    """The version these results are for."""

    next_evaluation_at: Timestamp | None = Field(default=None, max_length=64)
    """When the checks run next."""

    checks: list[MonitorStatus] = Field(default_factory=list, max_length=10)
    """Each check's last result."""


class Candidate(StatusModel):
    """What a retraining Job produced (from its termination message)."""

    version: str = Field(max_length=63, pattern=VERSION_PATTERN)
    """The candidate's model version."""

    uri: str = Field(max_length=2048, pattern=URI_PATTERN)
    """Its artifact."""

    digest: str | None = Field(default=None, max_length=71, pattern=DIGEST_PATTERN)
    """Its digest."""

    metrics: dict[str, float] = Field(default_factory=dict, max_length=20)
    """Evaluation metrics reported by the Job."""


class RetrainingRun(StatusModel):
    """One retraining run."""

    job: str = Field(max_length=63)
    """The Job's name."""

    trigger: str = Field(max_length=512)
    """What started it."""

    started_at: Timestamp = Field(max_length=64)
    """When the Job was created."""

    finished_at: Timestamp | None = Field(default=None, max_length=64)
    """When it ended."""

    outcome: Literal["Running", "Succeeded", "Failed"] = "Running"
    """Running, Succeeded or Failed."""

    reason: str = Field(default="", max_length=1024)
    """Why it failed, or what is missing."""

    candidate: Candidate | None = None
    """The candidate it reported."""

    notified: bool | None = None
    """Whether spec.retraining.notify.url accepted the candidate."""


class RetrainingStatus(StatusModel):
    """Retraining runs."""

    runs: int = 0
    """How many runs were started."""

    cooldown_until: Timestamp | None = Field(default=None, max_length=64)
    """No new run starts before this time."""

    last_run: RetrainingRun | None = None
    """The latest run."""


class ModelDeploymentStatus(StatusModel):
    """Observed state, written only by the operator."""

    observed_generation: int | None = None
    """The .metadata.generation this status describes."""

    phase: Phase | None = None
    """Pending, Progressing, Healthy, Degraded or Paused."""

    message: str | None = Field(default=None, max_length=1024)
    """One line saying what is going on or missing."""

    stable: VersionStatus | None = None
    """The version serving production traffic."""

    canary: VersionStatus | None = None
    """The version being rolled out, if any."""

    conditions: list[Condition] = Field(default_factory=list, max_length=16)
    """Ready, Progressing, Degraded."""

    history: list[HistoryEntry] = Field(default_factory=list, max_length=20)
    """Past revisions, newest last, bounded by spec.revisionHistoryLimit."""

    rollout: RolloutStatus | None = None
    """The canary in progress: step, weight, failures and every check's last result."""

    blocked_revision: BlockedRevision | None = None
    """The last revision that was rolled back."""

    previous: PreviousStable | None = None
    """The previous stable version, while it is kept for an instant rollback."""

    handled_actions: HandledActions = Field(default_factory=HandledActions)
    """Manual actions already carried out."""

    monitoring: MonitoringStatus | None = None
    """Continuous monitoring of the stable version."""

    retraining: RetrainingStatus | None = None
    """Retraining runs."""


class ModelDeployment(ApiModel):
    """A machine-learning model served on Kubernetes, one Deployment per version, rolled out safely."""

    model_config = ConfigDict(
        extra="ignore",  # apiVersion/kind/metadata are validated by the apiserver
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{NAME_PATTERN}')",
                    f"metadata.name must be at most {MAX_NAME_LENGTH} characters of lowercase letters, digits and "
                    "'-', starting with a letter (it prefixes the names of Services)",
                )
            ]
        },
    )

    spec: ModelDeploymentSpec
    """The desired state."""

    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)
    """The observed state."""
