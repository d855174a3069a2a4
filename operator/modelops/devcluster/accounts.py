"""Acting as a ServiceAccount instead of as admin.

The admin kubeconfig is in ``system:masters``, which bypasses RBAC. Tests that
must prove a permission (the operator's RBAC from ``manifests/``) mint a
short-lived token for a ServiceAccount through the TokenRequest API and use a
kubeconfig that holds only that token.
"""

from pathlib import Path

from kubernetes import client

from modelops.devcluster import kubeconfigs

REQUEST_TIMEOUT_SECONDS = 10
DEFAULT_TOKEN_SECONDS = 3600


def mint_token(api: client.ApiClient, *, namespace: str, service_account: str, seconds: int = DEFAULT_TOKEN_SECONDS) -> str:
    """A bound token for ``namespace/service_account``, valid for ``seconds``."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds))
    answer = client.CoreV1Api(api).create_namespaced_service_account_token(
        service_account, namespace, request, _request_timeout=REQUEST_TIMEOUT_SECONDS
    )
    return str(answer.status.token)


def service_account_kubeconfig(
    api: client.ApiClient,
    *,
    namespace: str,
    service_account: str,
    server: str,
    ca_cert: Path,
    path: Path,
    seconds: int = DEFAULT_TOKEN_SECONDS,
) -> Path:
    """Writes a kubeconfig at ``path`` that authenticates as the ServiceAccount, and returns ``path``."""
    token = mint_token(api, namespace=namespace, service_account=service_account, seconds=seconds)
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = kubeconfigs.render(
        server=server, ca_cert=ca_cert, user=user, credentials=kubeconfigs.token_credentials(token)
    )
    return kubeconfigs.write(path, config)
