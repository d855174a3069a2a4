"""The ``modelops`` command line.

``modelops devcluster up | down | status | env`` manages the local control plane
that tests and the demo run on. Later subcommands (``run``, ``crd``, ...) join
the same group. Errors print one line, ``error: <cause> (log: <path>)``, and
exit with status 1; usage errors exit with status 2 (click's convention).
"""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from modelops import __version__
from modelops.devcluster import cluster
from modelops.devcluster.errors import DevclusterError
from modelops.devcluster.layout import DEFAULT_STATE_DIR, state_layout

F = TypeVar("F", bound=Callable[..., Any])


def _state_dir_option(function: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_STATE_DIR,
        envvar="MODELOPS_STATE_DIR",
        show_default=True,
        help="Where the cluster keeps pids, ports, certificates, kubeconfig and logs (env: MODELOPS_STATE_DIR).",
    )(function)


def _fail(error: DevclusterError) -> None:
    click.echo(f"error: {error}", err=True)
    sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="modelops")
def main() -> None:
    """modelops: ship machine-learning models to Kubernetes safely, and keep them healthy."""


@main.command()
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), help="Write one file per CRD here.")
def crd(output_dir: Path | None) -> None:
    """Print the CustomResourceDefinitions (generated from the API models), or write them to --output-dir."""
    from modelops.api.crd import definitions, render_yaml

    for file_name, definition in definitions().items():
        if output_dir is None:
            click.echo("---\n" + render_yaml(definition), nl=False)
        else:
            (output_dir / file_name).write_text(render_yaml(definition))


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only this namespace (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch every namespace (the default without --namespace).")
@click.option(
    "--resync-seconds",
    type=click.FloatRange(1, 3600),
    default=60,
    show_default=True,
    envvar="MODELOPS_RESYNC_SECONDS",
    help="Period of the pass that repairs drift no event announced (env: MODELOPS_RESYNC_SECONDS).",
)
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True, help="Liveness endpoint URL.")
@click.option("--prometheus-url", envvar="MODELOPS_PROMETHEUS_URL", help="Prometheus for canary analysis (env: MODELOPS_PROMETHEUS_URL).")
@click.option("--prometheus-timeout", type=click.FloatRange(0.5, 60), default=5, show_default=True, help="Seconds per query.")
@click.option("--prometheus-ca-file", type=click.Path(dir_okay=False), help="CA bundle for an https Prometheus.")
@click.option("--prometheus-token-file", type=click.Path(dir_okay=False), help="File holding a bearer token (re-read per query).")
@click.option("--prometheus-basic-auth-file", type=click.Path(dir_okay=False), help="File holding user:password (re-read per query).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8081, show_default=True, help="Port of the operator's /metrics (0: off).")
@click.option("--metrics-address", default="0.0.0.0", show_default=True, help="Address of the operator's /metrics.")
@click.option("--analysis-tick-seconds", type=click.FloatRange(0.2, 60), default=1, show_default=True, help="How often due analyses are looked for.")
@click.option("--analysis-budget-seconds", type=click.FloatRange(0.5, 120), default=None,
              help="How long an analysis tick waits for a query before it counts as an Error verdict (default: --prometheus-timeout + 1).")
@click.option("--notify-deadline-seconds", type=click.FloatRange(1, 120), default=10, show_default=True,
              help="Total time for one attempt to POST a retraining candidate to spec.retraining.notify.url.")
@click.option("--notify-allowed-hosts", "notify_allowed_hosts", multiple=True, metavar="HOST",
              help="Hosts retraining candidates may be POSTed to (repeatable; *.example.com for subdomains). "
                   "Default: any host but loopback, link-local and unspecified addresses.")
@click.option("-v", "--verbose", is_flag=True, help="Log every pass, not only those that wrote.")
def run(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    resync_seconds: float,
    liveness: str,
    prometheus_url: str | None,
    prometheus_timeout: float,
    prometheus_ca_file: str | None,
    prometheus_token_file: str | None,
    prometheus_basic_auth_file: str | None,
    metrics_port: int,
    metrics_address: str,
    analysis_tick_seconds: float,
    analysis_budget_seconds: float | None,
    notify_deadline_seconds: float,
    notify_allowed_hosts: tuple[str, ...],
    verbose: bool,
) -> None:
    """Run the operator against the current cluster ($KUBECONFIG, or in-cluster credentials)."""
    import os

    settings = {
        "MODELOPS_RESYNC_SECONDS": str(resync_seconds),
        "MODELOPS_PROMETHEUS_URL": prometheus_url or "",
        "MODELOPS_PROMETHEUS_TIMEOUT_SECONDS": str(prometheus_timeout),
        "MODELOPS_PROMETHEUS_CA_FILE": prometheus_ca_file or "",
        "MODELOPS_PROMETHEUS_TOKEN_FILE": prometheus_token_file or "",
        "MODELOPS_PROMETHEUS_BASIC_AUTH_FILE": prometheus_basic_auth_file or "",
        "MODELOPS_METRICS_PORT": str(metrics_port),
        "MODELOPS_METRICS_ADDRESS": metrics_address,
        "MODELOPS_ANALYSIS_TICK_SECONDS": str(analysis_tick_seconds),
        "MODELOPS_ANALYSIS_BUDGET_SECONDS": str(analysis_budget_seconds) if analysis_budget_seconds else "",
        "MODELOPS_NOTIFY_DEADLINE_SECONDS": str(notify_deadline_seconds),
        "MODELOPS_NOTIFY_ALLOWED_HOSTS": ",".join(host.strip() for host in notify_allowed_hosts),
        "MODELOPS_NAMESPACES": ",".join(namespaces),
    }
    os.environ.update(settings)
    import kopf

    import modelops.handlers  # noqa: F401 - registers the handlers

    if namespaces and all_namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces, not both")
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    operator_settings = kopf.OperatorSettings()
    # Exact namespace names need no scanning of namespaces and CRDs, and so no cluster-scoped
    # rights (the namespaced install, manifests/namespaced/); patterns need `list namespaces`.
    operator_settings.scanning.disabled = bool(namespaces) and not any(_is_pattern(n) for n in namespaces)
    kopf.run(
        standalone=True,  # one replica with strategy Recreate: no peering objects, no peering writes
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=liveness,
        settings=operator_settings,
    )


def _is_pattern(namespace: str) -> bool:
    """A kopf namespace pattern (glob, negation, several names) rather than one exact name."""
    return any(character in namespace for character in "*?[]!,")


def _request_action(action: str, name: str, namespace: str | None) -> None:
    """Annotates the ModelDeployment with modelops.dev/action.<action>=<now>; the operator carries it out once.

    The patch is made under the field manager ``modelops-action-<action>``, so the apiserver
    records when it received this action (``metadata.managedFields[].time``): contradicting
    actions apply in that order, not by this machine's clock (planning/actions.py). The value,
    this clock's time in microseconds, only tells one request from the next.
    """
    import datetime

    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    from modelops.api import v1alpha1
    from modelops.planning import actions

    try:
        config.load_kube_config()
        _, context = config.list_kube_config_contexts()
    except (config.ConfigException, FileNotFoundError) as error:
        raise click.ClickException(f"no usable kubeconfig: {error}") from error
    namespace = namespace or context.get("context", {}).get("namespace") or "default"
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    patch = {"metadata": {"annotations": {actions.annotation(action): now}}}
    try:
        client.CustomObjectsApi().patch_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, namespace, v1alpha1.PLURAL, name, patch,
            field_manager=actions.field_manager(action), _content_type="application/merge-patch+json", _request_timeout=15,
        )
    except ApiException as error:
        if error.status == 404:
            raise click.ClickException(f"no ModelDeployment {name} in namespace {namespace}") from error
        raise click.ClickException(f"could not request {action}: HTTP {error.status} {error.reason}") from error
    click.echo(f"{action} requested for modeldeployment {namespace}/{name}; watch: kubectl get mdep {name} -n {namespace} -w")


ACTION_HELP = {
    "promote": "Skip the remaining steps and promote the canary now.",
    "abort": "Roll the canary back now (all traffic to stable); the revision is blocked.",
    "retry": "Retry a rolled-back revision (clears status.blockedRevision).",
    "pause": "Hold the canary where it is (stops the progress deadline).",
    "resume": "Continue a paused canary, or pass a pause step without duration.",
    "retrain": "Start a retraining Job now (spec.retraining), unless one runs or the cooldown has not passed.",
}


def _action_command(action: str) -> click.Command:
    @click.command(name=action, help=ACTION_HELP[action])
    @click.argument("name")
    @click.option("-n", "--namespace", help="Namespace (default: the kubeconfig context's).")
    def command(name: str, namespace: str | None) -> None:
        _request_action(action, name, namespace)

    return command


for _action in ACTION_HELP:
    main.add_command(_action_command(_action))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def kubectl_plugin() -> None:
    """kubectl modelops: promote, abort, retry, pause or resume a ModelDeployment's rollout, or retrain its model."""


for _action in ACTION_HELP:
    kubectl_plugin.add_command(_action_command(_action))


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, envvar="MODEL_PORT")
def serve(host: str, port: int) -> None:
    """Serve the model named by MODEL_NAME, MODEL_VERSION, MODEL_URI (and MODEL_DIGEST, MODEL_FORMAT,
    MODEL_PROFILE_URI, MODEL_SENSITIVE_ATTRIBUTES, MODELOPS_SERVE_TOKEN_FILE) over the Open Inference Protocol."""
    import logging

    from modelops.serving.server import ServerConfig
    from modelops.serving.server import serve as run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_server(ServerConfig.from_environment(), host, port)


@main.group()
def profile() -> None:
    """Reference profiles for drift measurement."""


@profile.command("build")
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Profile JSON to write.")
@click.option("--bins", type=click.IntRange(2, 100), default=10, show_default=True, help="Quantile bins per numeric feature.")
@click.option("--exclude", multiple=True, help="Columns to leave out (for example the target).")
@click.option(
    "--sensitive-attribute", "sensitive", multiple=True,
    help="A column whose distinct values (at most 50) are declared as the groups `modelops serve` tracks for fairness.",
)
def profile_build(data: Path, output: Path, bins: int, exclude: tuple[str, ...], sensitive: tuple[str, ...]) -> None:
    """Build a reference profile from training data (CSV with a header row).

    A --sensitive-attribute column is not profiled for drift: its values become the declared
    groups of that attribute, and the server counts any other group as __other__.
    """
    import csv
    import json

    from modelops.serving.drift import build_profile

    with data.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise click.ClickException(f"{data} has no header row")
        columns: dict[str, list[str]] = {name: [] for name in reader.fieldnames if name not in exclude}
        for line, row in enumerate(reader, start=2):
            for name in columns:
                if row.get(name) in (None, ""):
                    raise click.ClickException(f"{data}:{line}: column {name} is empty")
                columns[name].append(row[name])
    if not columns or not next(iter(columns.values())):
        raise click.ClickException(f"{data} has no data rows")
    try:
        built = build_profile(columns, bins=bins, sensitive_attributes=sensitive)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    output.write_text(json.dumps(built.to_json(), indent=1))
    declared = "".join(f", {len(groups)} groups of {name}" for name, groups in built.groups.items())
    click.echo(f"profile of {len(built.features)} features{declared} from {built.rows} rows: {output} ({built.digest})")


@main.command()
@click.option("--data", "data_uri", required=True, help="Labelled rows: a CSV (file:// URI or path) with a header row.")
@click.option("--label", default="label", show_default=True, help="The 0/1 target column; every other column is a feature.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Where <version>/model.joblib goes.")
@click.option("--version", help="The candidate's version (default: $MODELOPS_CURRENT_VERSION-r<UTC timestamp>).")
@click.option("--termination-log", help="Where the candidate JSON goes (default: $MODELOPS_TERMINATION_LOG or /dev/termination-log).")
def train(data_uri: str, label: str, output_dir: Path, version: str | None, termination_log: str | None) -> None:
    """Reference retraining step: fit a logistic regression on a CSV and report the candidate (see modelops.training)."""
    import os
    import time

    from modelops import training

    try:
        current = os.environ.get("MODELOPS_CURRENT_VERSION")
        if not version and not current:
            raise training.TrainingError("no --version and no MODELOPS_CURRENT_VERSION (the operator injects it into retraining Jobs)")
        dataset = training.read_dataset(training.local_path(data_uri), label)
        candidate = training.train(dataset, output_dir, version or training.candidate_version(str(current), time.time()))
        click.echo(training.report(candidate, training.termination_log_path(termination_log)))
    except training.TrainingError as error:
        raise click.ClickException(str(error)) from error


@main.command()
@_state_dir_option
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"), show_default=True,
              help="Where the timeline, the summary, the models and the logs go (replaced on every run).")
@click.option("-n", "--namespace", default="demo", show_default=True, help="The namespace the demo owns (deleted and recreated).")
@click.option("--keep", is_flag=True, help="Leave the devcluster, the operator, the pod runner and the traffic running.")
def demo(state_dir: Path, output_dir: Path, namespace: str, keep: bool) -> None:
    """The whole loop, live on the devcluster: deploy, canary promoted, slow canary rolled back, drift, retraining."""
    from modelops.demo.story import Demo, Settings

    sys.exit(Demo(Settings(state_dir=state_dir, output_dir=output_dir, namespace=namespace, keep=keep),
                  echo=lambda line: click.echo(line)).run())


@main.group()
def devcluster() -> None:
    """A real local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) and Prometheus."""


def _progress(message: str) -> None:
    click.echo(message, err=True)


@devcluster.command()
@_state_dir_option
@click.option("--nodes", type=click.IntRange(1, cluster.MAX_NODES), default=2, show_default=True, help="Fake kwok nodes.")
@click.option("--apiserver-port", type=click.IntRange(0, 65535), default=0, help="Port for kube-apiserver (0: any free).")
@click.option("--prometheus-port", type=click.IntRange(0, 65535), default=0, help="Port for Prometheus (0: any free).")
@click.option(
    "--timeout",
    type=click.FloatRange(5, 3600),
    default=cluster.DEFAULT_START_TIMEOUT_SECONDS,
    show_default=True,
    help="Seconds each component may take to become healthy.",
)
def up(state_dir: Path, nodes: int, apiserver_port: int, prometheus_port: int, timeout: float) -> None:
    """Build what is missing, start the cluster in the background, and wait until it is usable."""
    try:
        state = cluster.up(
            state_dir,
            nodes=nodes,
            apiserver_port=apiserver_port,
            prometheus_port=prometheus_port,
            timeout=timeout,
            progress=_progress,
        )
    except DevclusterError as error:
        _fail(error)
        return
    flag = "" if state.root == state_layout(None).root else f" --state-dir {state.root}"
    click.echo(
        f"\nKubernetes {state.kubernetes_version} at {state.server} ({state.nodes} kwok nodes), "
        f"Prometheus at {state.prometheus_url}\n"
        f"Use it:\n"
        f'  eval "$(modelops devcluster env{flag})"   # sets KUBECONFIG, PROMETHEUS_URL and PATH (kubectl)\n'
        f"  kubectl get nodes\n"
        f"  modelops devcluster status{flag}\n"
        f"  modelops devcluster down{flag}"
    )


def _running_cluster(state_dir: Path) -> cluster.ClusterState:
    """The recorded cluster, or exit 1 with a one-line error saying how to start one."""
    try:
        state = cluster.load_state(state_layout(state_dir))
    except DevclusterError as error:
        _fail(error)
        raise  # unreachable: _fail exits
    if state is None:
        click.echo(f"error: no devcluster in {state_layout(state_dir).root}: run `modelops devcluster up`", err=True)
        sys.exit(1)
    return state


@devcluster.command()
@_state_dir_option
def down(state_dir: Path) -> None:
    """Stop every process the cluster started (by PID, reverse order) and remove its state directory."""
    try:
        cluster.down(state_dir, progress=click.echo)
    except DevclusterError as error:
        _fail(error)


@devcluster.command()
@_state_dir_option
def status(state_dir: Path) -> None:
    """Report each component's health; exit 1 unless all are healthy."""
    state = _running_cluster(state_dir)
    statuses = cluster.check(state)
    for item in statuses:
        health = "healthy" if item.healthy else ("UNHEALTHY" if item.running else "DOWN")
        pid = str(item.pid) if item.pid else "-"
        memory = f"{item.rss_mib:.0f} MiB" if item.rss_mib is not None else "-"
        click.echo(f"{item.name:<24} {pid:>8} {health:<10} {memory:>9}  {item.detail}")
    total = sum(item.rss_mib or 0 for item in statuses)
    click.echo(f"{'total resident memory':<44} {total:>9.0f} MiB")
    sys.exit(0 if all(item.healthy for item in statuses) else 1)


@devcluster.command()
@_state_dir_option
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Only pods in these namespaces (default: all).")
def pods(state_dir: Path, namespaces: tuple[str, ...]) -> None:
    """Dev only: run `modelops serve` locally for every model-server pod (a kubelet stand-in; see docs/devcluster.md)."""
    import logging

    from modelops.devcluster import bootstrap
    from modelops.devcluster.podrunner import PodRunner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = _running_cluster(state_dir)
    with bootstrap.api_client(state.kubeconfig) as api:
        PodRunner(api, state.root, namespaces).run_forever()


@devcluster.command()
@_state_dir_option
def env(state_dir: Path) -> None:
    """Print `export KUBECONFIG=... PROMETHEUS_URL=...` for `eval "$(modelops devcluster env)"`."""
    state = _running_cluster(state_dir)
    click.echo(cluster.env_exports(state))


if __name__ == "__main__":  # pragma: no cover
    main()
