# syntax=docker/dockerfile:1
# driftguard image: the sidecar (`run`) and the injector (`inject`) in one image.
# Node 24 runs the TypeScript sources directly (type stripping): no build step, so the
# image holds proxy/ and rules/ as they are in the repository, plus production
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

# --- runtime ------------------------------------------------------------------------
FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    NODE_OPTIONS="--max-old-space-size=96 --max-semi-space-size=4"
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY rules ./rules
COPY proxy ./proxy
# npm is not needed at run time; removing it shrinks the attack surface.
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn* /usr/local/bin/yarn /usr/local/bin/yarnpkg
USER 65532:65532
# 15080 traffic, 15021 admin (/healthz, /readyz), 9443 injector webhook
EXPOSE 15080 15021 9443
ENTRYPOINT ["node", "/app/proxy/cli.ts"]
CMD ["run", "--config", "/etc/driftguard/rules/rules.yaml"]
