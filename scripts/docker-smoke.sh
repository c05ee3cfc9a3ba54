#!/usr/bin/env bash
# docker-smoke.sh [cpu|cu128|ray] - build the image and check it end to end in real containers.
#
# `ray`: a CPU image with the ray extra; compose.yaml + compose.ray.yaml + scripts/smoke-ray.compose.yaml bring
# up a Ray head, one CPU worker, the bot and the fake Discord on one `internal: true` network; `workers`
# deploys through the dashboard; a CLI container renders over HTTP; the bot answers /imagine while the
# worker container is killed mid-job, and the job still ends `done`, once; `docker stop` of the Ray
# containers exits 0 within seconds. See ray_smoke below.
#
# Builds imagine-bot:smoke-<variant> (default cpu), then, in containers with the named volumes
# imagine-smoke-data (/app/data) and imagine-smoke-cache (/app/cache), on the user-defined network
# imagine-smoke-net: tiny-models; `imagine --json` on them at 128 px; `rerun` byte-identical; `health`
# non-zero with no bot; the bot against the project's fake Discord (scripts/fake_discord.py, run from the
# same image in a second container) answering one /imagine with a PNG; `health` zero while it runs;
# `docker stop` exiting 0 within the grace; the history still there in the volumes afterwards.
# One line per check; exits non-zero on the first failure (with the log that explains it). Removes its
# containers, network and volumes on exit. Needs a Docker daemon; not part of CI.
#
# Environment: SMOKE_BUILD_ARGS  extra `docker build` arguments (e.g. "--build-arg PIP_INDEX_URL=...")
#              GPU=0             on a CUDA variant, run without `--gpus all`
set -euo pipefail
cd "$(dirname "$0")/.."

variant=${1:-cpu}
image=imagine-bot:smoke-$variant
data=imagine-smoke-data
cache=imagine-smoke-cache
net=imagine-smoke-net
bot=imagine-smoke-bot
fake=imagine-smoke-discord
grace=120 # docker stop's timeout: more than the bot's 90 s job grace
work=$(mktemp -d)

remove_containers_and_volumes() {
    docker rm -f "$bot" "$fake" >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    docker volume rm "$data" "$cache" >/dev/null 2>&1 || true
}
trap 'remove_containers_and_volumes; rm -rf "$work"' EXIT
fail() { # message [log file to show]
    printf 'FAIL %s\n' "$1"
    if [[ -n ${2:-} && -s $2 ]]; then tail -n 40 "$2" | sed 's/^/     | /'; fi
    exit 1
}
ok() { printf 'ok   %s\n' "$*"; }

gpu=()
device=cpu
if [[ $variant != cpu ]]; then
    device=auto
    [[ ${GPU:-1} == 0 ]] || gpu=(--gpus all)
fi
# Every container: tiny models in the cache volume, 128 px, 2 steps, 2 images, no network for models.
settings=(
    -e IMAGINE_SD_MODEL=/app/cache/tiny/sd -e IMAGINE_TEXT_MODEL=/app/cache/tiny/text
    -e IMAGINE_DEVICE="$device" -e IMAGINE_WIDTH=128 -e IMAGINE_HEIGHT=128 -e IMAGINE_STEPS=2
    -e IMAGINE_COUNT=2 -e IMAGINE_COOLDOWN_SECONDS=0 -e IMAGINE_PREVIEW_EVERY=0
    -e HF_HUB_OFFLINE=1 -e TRANSFORMERS_OFFLINE=1
)
in_image() { docker run --rm --init "${gpu[@]}" -v "$data:/app/data" -v "$cache:/app/cache" "${settings[@]}" "$image" "$@"; }
# sha256 of files in the data volume, one per line.
hashes() {
    docker run --rm -v "$data:/app/data:ro" --entrypoint python "$image" -c \
        'import hashlib, sys; [print(hashlib.sha256(open(p, "rb").read()).hexdigest()) for p in sys.argv[1:]]' "$@"
}
json_field() { python3 -c 'import json, sys; v = json.load(open(sys.argv[1]))[sys.argv[2]]; print(*v) if isinstance(v, list) else print(v)' "$@"; }

wait_for_log() { # container, text, seconds
    local deadline=$((SECONDS + $3))
    while ((SECONDS < deadline)); do
        docker logs "$1" >"$work/$1.log" 2>&1 || true
        grep -q "$2" "$work/$1.log" && return 0
        grep -q FAILED "$work/$1.log" && return 1
        [[ $(docker inspect -f '{{.State.Running}}' "$1") == true ]] || return 1
        sleep 2
    done
    return 1
}
# -- the Ray variant ---------------------------------------------------------------------------------------
ray_smoke() {
    image=imagine-bot:smoke-ray
    export SMOKE_IMAGE=$image SMOKE_WORK=$work COMPOSE_PROJECT_NAME=imagine-smoke-ray
    compose=(docker compose --project-directory "$PWD" -f compose.yaml -f compose.ray.yaml -f scripts/smoke-ray.compose.yaml)
    ray_down() { "${compose[@]}" --profile cli down -v --remove-orphans >/dev/null 2>&1 || true; }
    trap 'ray_down; rm -rf "$work"' EXIT
    ray_down
    # shellcheck disable=SC2086 # SMOKE_BUILD_ARGS is a list of arguments
    started=$SECONDS
    docker build --build-arg TORCH_VARIANT=cpu --build-arg EXTRAS=ray ${SMOKE_BUILD_ARGS:-} -t "$image" . \
        >"$work/build.log" 2>&1 || fail "docker build (cpu + ray)" "$work/build.log"
    ok "build $image: $(($(docker image inspect -f '{{.Size}}' "$image") / 1000000)) MB, $((SECONDS - started)) s"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/discord_token"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/workers_token"
    if ((EUID == 0)); then chown 10001:10001 "$work"/*_token && chmod 0600 "$work"/*_token; else chmod 0644 "$work"/*_token; fi
    "${compose[@]}" run --rm --no-deps cli tiny-models /app/cache/tiny >"$work/tiny.log" 2>&1 || fail "tiny-models" "$work/tiny.log"
    ok "tiny-models written to the smoke's cache volume"

    started=$SECONDS
    "${compose[@]}" up -d --wait ray-head >"$work/up.log" 2>&1 || fail "up ray-head" "$work/up.log"
    "${compose[@]}" up -d ray-worker >>"$work/up.log" 2>&1 || fail "up ray-worker" "$work/up.log"
    ok "ray-head healthy (token generated on its first start), ray-worker started after $((SECONDS - started)) s"
    "${compose[@]}" run --rm ray-deploy >"$work/deploy.log" 2>&1 || fail "ray-deploy (python -m bot workers)" "$work/deploy.log"
    grep -q 'ready: ' "$work/deploy.log" || fail "ray-deploy said nothing about the replicas" "$work/deploy.log"
    ok "ray-deploy exit 0 after $((SECONDS - started)) s:"
    grep -E '^(deploying|  [A-Z_]+:|ready:)' "$work/deploy.log" | sed 's/^/     | /'

    "${compose[@]}" run --rm --no-deps cli imagine "smoke lighthouse" --steps 2 --json >"$work/cli.json" 2>"$work/cli.log" \
        || fail "cli imagine over HTTP" "$work/cli.log"
    [[ $(json_field "$work/cli.json" status 2>/dev/null) == done ]] || fail "cli job not done" "$work/cli.log"
    ok "cli container: job $(json_field "$work/cli.json" job_id) done on $(python3 -c 'import json,sys; w=json.load(open(sys.argv[1]))["render"]["worker"]; print(w["host"], "pid", w["pid"], "replica", w["replica"])' "$work/cli.json")"

    "${compose[@]}" up -d --no-deps fake-discord imagine-bot >"$work/up2.log" 2>&1 || fail "up fake-discord imagine-bot" "$work/up2.log"
    fake=$("${compose[@]}" ps -q fake-discord)
    worker=$("${compose[@]}" ps -q ray-worker)
    bot=$("${compose[@]}" ps -q imagine-bot)
    history() { "${compose[@]}" exec -T imagine-bot python -m bot history --json 2>/dev/null; }
    deadline=$((SECONDS + 300))
    until history | python3 -c 'import json,sys; sys.exit(0 if any(j["status"] == "running" and j["action"] == "imagine" and j.get("user_id") for j in json.load(sys.stdin)) else 1)' 2>/dev/null; do
        ((SECONDS < deadline)) || fail "the bot never started the /imagine job" "$work/up2.log"
        sleep 1
    done
    sleep 2
    docker kill "$worker" >/dev/null
    ok "/imagine running on the worker: worker container killed (SIGKILL) mid-job"
    "${compose[@]}" up -d --no-deps ray-worker >>"$work/up2.log" 2>&1 || fail "restart ray-worker" "$work/up2.log"
    started=$SECONDS
    if ! wait_for_log "$fake" "answered with" 600; then
        docker logs "$bot" >>"$work/$fake.log" 2>&1 || true
        fail "the bot did not answer /imagine after the worker died" "$work/$fake.log"
    fi
    history >"$work/history.json"
    python3 - "$work/history.json" <<'PY' || fail "the /imagine job did not end done, once" "$work/history.json"
import json, sys
jobs = [j for j in json.load(open(sys.argv[1])) if j.get("user_id")]
assert len(jobs) == 1 and jobs[0]["status"] == "done", jobs
print(f"ok   /imagine job {jobs[0]['job_id']} done once (attempts {jobs[0]['attempts']}) on replica "
      f"{jobs[0]['render']['worker']['replica']} after the worker came back")
PY
    ok "bot answered after $((SECONDS - started)) s: $(grep -o 'answered with.*' "$work/$fake.log")"
    "${compose[@]}" exec -T imagine-bot python -m bot health >"$work/health.log" 2>&1 || fail "health" "$work/health.log"
    ok "health: $(cat "$work/health.log")"

    for service in ray-worker ray-head; do
        id=$("${compose[@]}" ps -q "$service")
        started=$SECONDS
        docker stop -t 30 "$id" >/dev/null
        code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
        [[ $code == 0 ]] || fail "docker stop $service: exit $code" "$work/up.log"
        ok "docker stop $service: exit 0 after $((SECONDS - started)) s"
    done
    ! docker logs "$bot" 2>&1 | grep -q Traceback || fail "the bot logged a traceback"
    echo "docker smoke (ray): all checks passed"
}

if [[ $variant == ray ]]; then
    ray_smoke
    exit 0
fi

remove_containers_and_volumes # left over from an interrupted run

# 1. build
# shellcheck disable=SC2086 # SMOKE_BUILD_ARGS is a list of arguments
started=$SECONDS
docker build --build-arg TORCH_VARIANT="$variant" ${SMOKE_BUILD_ARGS:-} -t "$image" . >"$work/build.log" 2>&1 \
    || fail "docker build ($variant)" "$work/build.log"
size=$(docker image inspect -f '{{.Size}}' "$image")
ok "build $image: $((size / 1000000)) MB, $((SECONDS - started)) s"

# 2. runtime user and HOME
who=$(docker run --rm --entrypoint sh "$image" -c 'touch "$HOME/.probe" && echo "$(id -u):$(id -g) HOME=$HOME"' 2>&1) \
    || fail "HOME is not writable by the runtime user: $who"
ok "runs as $who (writable)"

# 3. tiny models into the named cache volume
docker volume create "$data" >/dev/null && docker volume create "$cache" >/dev/null
in_image tiny-models /app/cache/tiny >"$work/tiny.log" 2>&1 || fail "tiny-models" "$work/tiny.log"
ok "tiny-models written to volume $cache"

# 4. imagine --json at 128 px
in_image imagine "smoke test lighthouse" --seed 1234 --json >"$work/imagine.json" 2>"$work/imagine.log" \
    || fail "imagine --json" "$work/imagine.log"
job=$(json_field "$work/imagine.json" job_id)
[[ $(json_field "$work/imagine.json" status) == done ]] || fail "imagine: job $job not done" "$work/imagine.json"
read -r -a files1 <<<"$(json_field "$work/imagine.json" images) $(json_field "$work/imagine.json" grid)"
hashes "${files1[@]}" >"$work/hashes1" 2>&1 || fail "imagine: images missing from volume $data" "$work/hashes1"
ok "imagine --json: job $job done at $(json_field "$work/imagine.json" width)x$(json_field "$work/imagine.json" height), ${#files1[@]} PNG files in volume $data"

# 5. rerun: a new job with byte-identical images
in_image rerun "$job" --json >"$work/rerun.json" 2>"$work/rerun.log" || fail "rerun $job" "$work/rerun.log"
job2=$(json_field "$work/rerun.json" job_id)
read -r -a files2 <<<"$(json_field "$work/rerun.json" images) $(json_field "$work/rerun.json" grid)"
hashes "${files2[@]}" >"$work/hashes2" 2>&1 || fail "rerun: images missing" "$work/hashes2"
[[ $job2 != "$job" ]] && cmp -s "$work/hashes1" "$work/hashes2" \
    || fail "rerun: job $job2 differs from $job" "$work/hashes2"
ok "rerun: job $job2 byte-identical to $job (${#files2[@]} files, sha256 equal)"

# 6. health with no bot running
set +e
in_image health >"$work/health0.log" 2>&1
code=$?
set -e
((code != 0)) || fail "health exits 0 with no bot running" "$work/health0.log"
ok "health with no bot: exit $code ($(head -n 1 "$work/health0.log"))"

# 7. the fake Discord in a second container, on a user-defined network
docker network create "$net" >/dev/null
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"
# Readable by the containers' uid 10001 only, as the README says (world-readable where we cannot chown).
if ((EUID == 0)); then chown 10001:10001 "$work/token" && chmod 0600 "$work/token"; else chmod 0644 "$work/token"; fi
docker run -d --name "$fake" --network "$net" \
    -v "$PWD/tests:/opt/smoke/tests:ro" -v "$PWD/scripts/fake_discord.py:/opt/smoke/scripts/fake_discord.py:ro" \
    -v "$work/token:/run/secrets/discord_token:ro" --entrypoint python "$image" \
    /opt/smoke/scripts/fake_discord.py --port 8080 --advertised-host "$fake" \
    --token-file /run/secrets/discord_token >/dev/null
wait_for_log "$fake" listening 60 || fail "fake Discord did not start" "$work/$fake.log"
ok "fake Discord listening in container $fake"

# 8. the bot in its own container: token from a mounted file, answers one /imagine with a PNG
docker run -d --name "$bot" --network "$net" --init --stop-timeout "$grace" "${gpu[@]}" \
    -v "$data:/app/data" -v "$cache:/app/cache" -v "$work/token:/run/secrets/discord_token:ro" \
    -e DISCORD_TOKEN_FILE=/run/secrets/discord_token \
    -e DISCORD_API_BASE="http://$fake:8080/api/v10" -e DISCORD_GATEWAY_URL="ws://$fake:8080/gateway" \
    "${settings[@]}" "$image" run >/dev/null
started=$SECONDS
if ! wait_for_log "$fake" "answered with" 600; then
    docker logs "$bot" >"$work/$bot.log" 2>&1 || true
    cat "$work/$bot.log" >>"$work/$fake.log"
    fail "the bot did not answer /imagine" "$work/$fake.log"
fi
ok "bot in container $bot answered /imagine after $((SECONDS - started)) s: $(grep -o 'answered with.*' "$work/$fake.log")"

# 9. health while the bot runs; the README's online backup of the database
docker exec "$bot" python -m bot health >"$work/health1.log" 2>&1 || fail "health exits non-zero while the bot runs" "$work/health1.log"
ok "health while the bot runs: exit 0"
docker exec "$bot" python -c "import sqlite3; sqlite3.connect('/app/data/history.sqlite3').backup(sqlite3.connect('/app/data/backup.sqlite3'))" \
    >"$work/backup.log" 2>&1 || fail "online backup in the running container" "$work/backup.log"
ok "online backup of the database while the bot runs"

# 10. docker stop: SIGTERM through tini, clean exit within the grace
started=$SECONDS
docker stop -t "$grace" "$bot" >/dev/null
took=$((SECONDS - started))
code=$(docker inspect -f '{{.State.ExitCode}}' "$bot")
docker logs "$bot" >"$work/$bot.log" 2>&1
[[ $code == 0 ]] || fail "docker stop: the bot exited $code" "$work/$bot.log"
((took < grace)) || fail "docker stop took $took s (grace $grace s)" "$work/$bot.log"
! grep -q Traceback "$work/$bot.log" || fail "the bot logged a traceback" "$work/$bot.log"
ok "docker stop: exit 0 after $took s (grace $grace s), no traceback"

# 11. the token stayed out of the container's config and logs
token=$(cat "$work/token")
! docker inspect "$bot" | grep -q "$token" || fail "the token is visible in docker inspect"
! grep -q "$token" "$work/$bot.log" || fail "the token is in the bot's log"
ok "token read from the mounted file; not in docker inspect or the log"

# 12. the history survives in the named volume, and the README's backup / restore brings it back
docker stop "$fake" >/dev/null
count_jobs() {
    in_image history --json 2>"$work/history.log" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))'
}
jobs=$(count_jobs) || fail "history" "$work/history.log"
((jobs == 3)) || fail "history lists $jobs jobs, expected 3 (imagine, rerun, /imagine)" "$work/history.log"
ok "history after all containers stopped: $jobs jobs in volume $data"
docker run --rm -u "$(id -u):$(id -g)" -v "$data:/d:ro" -v "$work:/b" --entrypoint tar "$image" \
    czf /b/imagine-data.tgz -C /d . >"$work/tar.log" 2>&1 || fail "backup: tar of the volume" "$work/tar.log"
docker rm "$bot" "$fake" >/dev/null # as `docker compose down` does: nothing holds the volume any more
docker volume rm "$data" >/dev/null && docker volume create "$data" >/dev/null
docker run --rm -u 0 -v "$data:/d" -v "$work:/b:ro" --entrypoint sh "$image" -c \
    'tar xzf /b/imagine-data.tgz -C /d && mv /d/backup.sqlite3 /d/history.sqlite3 && rm -f /d/history.sqlite3-wal /d/history.sqlite3-shm' \
    >"$work/restore.log" 2>&1 || fail "restore into a new volume" "$work/restore.log"
jobs=$(count_jobs) || fail "history after restore" "$work/history.log"
((jobs == 3)) || fail "history lists $jobs jobs after restore, expected 3" "$work/history.log"
ok "backup (tar of the volume) restored into a new volume: $jobs jobs, $(du -h "$work/imagine-data.tgz" | cut -f1) archive"
echo "docker smoke ($variant): all checks passed"
