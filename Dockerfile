# The operator image. Not built in CI here (no container runtime); kept simple and standard.
#   docker build -t ghcr.io/modelops/modelops:0.1.0 .
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
COPY --from=build /install /usr/local
USER 65532:65532
ENTRYPOINT ["modelops"]
CMD ["run", "--all-namespaces"]
