# The agent image: nothing but the static plugin binary, which runs on the
# nodes through its hidden "agent" subcommand (plugin and agent are one binary,
# and the image tag is the plugin's version). Built by hack/build-image.sh
# (make image) from a context holding just kubectl-rotate_certs and LICENSE;
# FROM scratch, so there is no base image to pull.
FROM scratch
ARG VERSION=unknown
LABEL org.opencontainers.image.title="kubectl-rotate-certs" \
      org.opencontainers.image.description="Node agent of kubectl rotate-certs" \
      org.opencontainers.image.source="https://github.com/rotate-certs/kubectl-rotate-certs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
COPY LICENSE /LICENSE
COPY kubectl-rotate_certs /kubectl-rotate_certs
# Root: the agent rewrites root-owned files on the host (privileged pod).
USER 0
ENTRYPOINT ["/kubectl-rotate_certs"]
