# syntax=docker/dockerfile:1
# driftguard image: the sidecar (`run`) and the injector (`inject`) in one image.
# The image runs JavaScript: a build stage erases the TypeScript sources' types with tsc
# (tsconfig.build.json, the same as `make build`), so the sidecar does not load Node's type
# stripper at run time (about 18 MiB resident, measured: README, Performance). The image
# holds that JavaScript as /app/proxy, rules/ as in the repository, and production
# dependencies only.
#
#   docker build -t driftguard:0.1.0 .
#
# Runs as a non-root numeric user (so runAsNonRoot can be verified) and writes nothing
# to its root filesystem: it works with readOnlyRootFilesystem (the chart and the
# injector mount an emptyDir at /tmp anyway).

ARG NODE_IMAGE=node:24-bookworm-slim

# --- dependencies: production only, from the lock file -----------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --omit=dev leaves out tap, typescript and the `node` npm package (the base image
# already is Node 24). No install scripts are needed by the production dependencies.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

# --- build: types erased, .ts imports rewritten to .js --------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
# Dev dependencies for tsc; --ignore-scripts skips the `node` npm package's download (the
# base image is Node 24 already).
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY rules ./rules
COPY proxy ./proxy
RUN npx tsc -p tsconfig.build.json

# --- runtime ------------------------------------------------------------------------
FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    NODE_OPTIONS="--max-old-space-size=112 --max-semi-space-size=4"
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY rules ./rules
COPY --from=build /app/build/proxy ./proxy
# npm is not needed at run time; removing it shrinks the attack surface.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn* /usr/local/bin/yarn /usr/local/bin/yarnpkg
USER 65532:65532
# 15080 traffic, 15021 admin (/healthz, /readyz), 9443 injector webhook
EXPOSE 15080 15021 9443
ENTRYPOINT ["node", "/app/proxy/cli.js"]
CMD ["run", "--config", "/etc/driftguard/rules/rules.yaml"]
