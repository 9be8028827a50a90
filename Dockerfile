# detour as a gateway for other machines: the proxy on 0.0.0.0:8080, as a non-root user, with
# DETOUR_HOME (config.yaml, detour.db, the CA) on a volume.
#
#   docker build -t detour .
#   docker run -d --name detour -p 8080:8080 -v detour:/data -e DEEPSEEK_API_KEY detour
#   docker exec detour detour status
#   docker cp detour:/data/mitmproxy/mitmproxy-ca-cert.pem .   # what clients must trust
#
# The proxy has no authentication: publish the port only where everyone who can reach it may
# spend the configured accounts.

FROM python:3.12-slim AS build
RUN pip install --no-cache-dir uv
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY addons addons
COPY translators translators
COPY certs certs
COPY scripts scripts
# the wheel, and the exact dependency versions of uv.lock
RUN uv build --wheel --out-dir /dist \
 && uv export --frozen --no-dev --no-emit-project --no-hashes -q -o /dist/requirements.txt

FROM python:3.12-slim
RUN useradd --create-home --uid 10001 detour \
 && mkdir /data && chown detour:detour /data
COPY --from=build /dist /dist
RUN pip install --no-cache-dir -r /dist/requirements.txt /dist/*.whl && rm -rf /dist
USER detour
ENV DETOUR_HOME=/data PYTHONUNBUFFERED=1
VOLUME ["/data"]
EXPOSE 8080
# the CA lives on the volume too, so clients keep trusting it across container rebuilds;
# `detour up` execs mitmdump, which stops cleanly on `docker stop` (SIGTERM, rows written)
ENTRYPOINT ["detour", "--confdir", "/data/mitmproxy"]
CMD ["up", "--host", "0.0.0.0", "--allow-remote"]
