# regmirror's container image: one static binary on an empty base, with CA roots for https
# upstreams, running as an unprivileged user with its cache on the /data volume.
#
# Build it with deploy/image/build (it compiles the static binary with cargo and assembles this
# file's context offline; no base image is pulled):
#   deploy/image/build regmirror:latest
#   docker run -d --name regmirror -p 5000:5000 -v regmirror-data:/data regmirror:latest
#
# The context holds: regmirror (static), ca-certificates.crt, mirror.toml (the documented
# defaults, cached under /data) and an empty data/ directory.
FROM scratch
COPY regmirror /usr/local/bin/regmirror
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY mirror.toml /etc/regmirror/mirror.toml
# The volume's mount point, owned by the user that writes it (a new named volume copies this).
COPY --chown=10001:10001 data /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 5000
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# `regmirror healthcheck` asks the server's /healthz on the listen port of the same config.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/regmirror", "healthcheck", "--config", "/etc/regmirror/mirror.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/regmirror"]
CMD ["serve", "--config", "/etc/regmirror/mirror.toml"]
