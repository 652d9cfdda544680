# The tally merger as a container image:
#
#   docker build -t tally-merger .
#   docker run -p 8790:8790 -v tally-data:/data -e TALLY_SYNC_TOKEN=... tally-merger
#
# SQLite in the /data volume by default; TALLY_DATABASE_URL=postgres://... for several
# mergers sharing one Postgres (docs/deployment.md). Every flag of `tally-merger --help` can
# be given as an argument after the image name, or as its TALLY_* environment variable.

# --- build: the toolchain pinned in rust-toolchain.toml.
FROM rust:1.95.0-bookworm AS build
# The image's toolchain is the pinned one; naming it here makes rustup ignore
# rust-toolchain.toml, which would otherwise fetch the wasm32 and thumbv7em targets (and
# clippy, rustfmt) that the merger does not need.
ENV RUSTUP_TOOLCHAIN=1.95.0 \
    CARGO_TERM_COLOR=never
WORKDIR /src
# The whole workspace (minus .dockerignore): cargo reads every member's manifest, and
# Cargo.lock pins every version (--locked).
COPY . .
RUN cargo build --release --locked -p tally-merger

# --- runtime: glibc from the same Debian release as the build stage.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --uid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin tally \
 && mkdir -p /data \
 && chown tally:tally /data
COPY --from=build /src/target/release/tally-merger /usr/local/bin/tally-merger
USER tally
WORKDIR /data
# A named volume starts out owned by tally (it copies this directory); a bind-mounted host
# directory must be writable by uid 10001.
VOLUME ["/data"]
ENV TALLY_LISTEN=0.0.0.0:8790 \
    TALLY_DATABASE_URL=sqlite:///data/tally.db
EXPOSE 8790
# No HEALTHCHECK: the slim image has no HTTP client. Probe GET /healthz (alive) and
# GET /readyz (the database answers) from the orchestrator or load balancer.
# tally-merger is PID 1 and handles SIGTERM itself: it finishes open requests and commits
# queued syncs before it exits (give it --shutdown-timeout plus a little: docker stop -t 15).
ENTRYPOINT ["tally-merger"]
