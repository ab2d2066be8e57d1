"""docker-compose.yml's MinIO: the platform signs in as a user of its own bucket, made (again and again) by
the init container, not as the root account. The rest of the file is checked in tests/test_compose.py."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from portfolio.envparse import Env
from tests.compose_file import PLATFORM_SERVICES, ROOT, env_of, interpolated


# --- MinIO: the platform holds a user for its bucket, not the root account ---------------------------------
def test_the_platform_signs_in_to_minio_as_its_own_user_not_as_the_root_account(compose):
    minio = compose["services"]["minio"]
    root_user = minio["environment"]["MINIO_ROOT_USER"]
    assert minio["environment"]["MINIO_ROOT_PASSWORD_FILE"] == "/run/secrets/minio_root_password"
    assert minio["secrets"] == ["minio_root_password"]
    assert compose["secrets"]["minio_root_password"]["file"] == "./secrets/minio_root_password"
    for service in PLATFORM_SERVICES:
        env = env_of(compose, service)
        assert env["MINIO_ACCESS_KEY"] != root_user, service
        assert env["MINIO_SECRET_KEY_FILE"] != minio["environment"]["MINIO_ROOT_PASSWORD_FILE"], service
        assert "minio_root_password" not in compose["services"][service]["secrets"], service


def test_platform_processes_start_once_the_bucket_and_their_minio_user_exist(compose):
    init = compose["services"]["minio-init"]
    assert init["restart"] == "no"
    assert init["depends_on"]["minio"] == {"condition": "service_healthy"}
    assert compose["services"]["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    # `migrate` waits for it, and every other platform process for `migrate`.
    assert compose["services"]["migrate"]["depends_on"]["minio-init"] == {
        "condition": "service_completed_successfully"
    }
    for service in PLATFORM_SERVICES - {"migrate"}:
        assert compose["services"][service]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, service


MINIO_INIT = ROOT / "deploy" / "minio" / "init-bucket.sh"

# A stand-in for mc: each call leaves its arguments and its standard input in CALLS (N.args, N.stdin), keeps
# the policy file it is given, and remembers the attached policy for `admin user info`.
FAKE_MC = r"""#!/bin/sh
n=$(ls "$CALLS" | wc -l)
n=$((n / 2))
printf '%s\n' "$@" >"$CALLS/$n.args"
cat >"$CALLS/$n.stdin"
printf '%s' "$MC_CONFIG_DIR" >"$CALLS/../config-dir"
case "$1 $2 $3" in
"admin policy create") cp "$6" "$CALLS/../policy.json" ;;
"admin policy attach") printf '%s' "$5" >"$CALLS/../attached" ;;
"admin user info") printf 'AccessKey: %s\nPolicyName: %s\n' "$5" "$(cat "$CALLS/../attached" 2>/dev/null)" ;;
esac
"""


def run_minio_init(compose: dict, tmp_path: Path) -> list[tuple[list[str], str]]:
    """deploy/minio/init-bucket.sh with minio-init's environment and secrets, against the stand-in mc."""
    init = compose["services"]["minio-init"]
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir(exist_ok=True)
    shutil.rmtree(calls, ignore_errors=True)
    calls.mkdir()
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(0o755)
    secrets = {name: f"{name}-value-" + "s" * 32 for name in init["secrets"]}
    for name, value in secrets.items():
        (tmp_path / name).write_text(value + "\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "TMPDIR": str(tmp_path),
        **{key: interpolated(value) for key, value in init["environment"].items()},
        "MINIO_ROOT_PASSWORD_FILE": str(tmp_path / "minio_root_password"),
        "MINIO_APP_PASSWORD_FILE": str(tmp_path / "minio_secret_key"),
    }
    result = subprocess.run(
        ["sh", str(MINIO_INIT)], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )
    assert result.returncode == 0, result.stderr
    recorded = []
    for index in range(len(list(calls.glob("*.args")))):
        args = (calls / f"{index}.args").read_text().splitlines()
        recorded.append((args, (calls / f"{index}.stdin").read_text()))
    for args, _ in recorded:  # no secret on a command line, where `ps` shows it
        assert not any(value in " ".join(args) for value in secrets.values()), args
    return recorded


def test_the_minio_init_mounts_the_secrets_its_script_reads(compose):
    init = compose["services"]["minio-init"]
    assert set(re.findall(r"/run/secrets/(\w+)", MINIO_INIT.read_text())) == set(init["secrets"])
    assert set(init["secrets"]) == {"minio_root_password", "minio_secret_key"}
    assert f"./deploy/minio/init-bucket.sh:{init['entrypoint'][-1]}:ro" in init["volumes"]


def test_the_minio_init_makes_the_bucket_and_a_user_allowed_only_that_buckets_objects(compose, tmp_path):
    init_env = env_of(compose, "minio-init")
    minio_env = compose["services"]["minio"]["environment"]
    bucket = Env(env_of(compose, "web")).text("MINIO_BUCKET")
    assert init_env["MINIO_BUCKET"] == bucket
    assert init_env["MINIO_ROOT_USER"] == minio_env["MINIO_ROOT_USER"]
    for service in PLATFORM_SERVICES:
        assert env_of(compose, service)["MINIO_ACCESS_KEY"] == init_env["MINIO_APP_USER"], service
        assert env_of(compose, service)["MINIO_BUCKET"] == bucket, service

    calls = run_minio_init(compose, tmp_path)
    by_command = {tuple(args[:3]): (args, stdin) for args, stdin in calls}
    # As the root account, its password on standard input.
    alias, stdin = by_command[("alias", "set", "minio")]
    assert alias[3:] == ["http://minio:9000", minio_env["MINIO_ROOT_USER"]]
    assert stdin.startswith("minio_root_password-value-")
    assert by_command[("mb", "--ignore-existing", f"minio/{bucket}")]
    # The platform's user, its password (the platform's minio_secret_key) on standard input.
    user, stdin = by_command[("admin", "user", "add")]
    assert user[3:] == ["minio", init_env["MINIO_APP_USER"]]
    assert stdin.startswith("minio_secret_key-value-")
    # Its policy: the bucket's objects and the bucket's listing, nothing else.
    create, _ = by_command[("admin", "policy", "create")]
    policy_name = create[4]
    policy = json.loads((tmp_path / "policy.json").read_text())
    actions = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert set(statement["Resource"]) <= {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
        actions |= set(statement["Action"])
    assert all(action.startswith("s3:") and "*" not in action for action in actions), actions
    assert "s3:CreateBucket" not in actions  # the bucket exists before the platform starts
    # What S3Store calls: bucket_exists, presigned URLs, stat/get/put/remove of objects.
    assert {
        "s3:ListBucket",
        "s3:GetBucketLocation",
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
    } <= actions
    attach, _ = by_command[("admin", "policy", "attach")]
    assert attach[3:] == ["minio", policy_name, "--user", init_env["MINIO_APP_USER"]]
    # mc's alias, with the root password, does not outlive the run.
    assert not Path((tmp_path / "config-dir").read_text()).exists()


def test_the_minio_init_can_run_again(compose, tmp_path):
    """Every `docker compose up` runs it: a rerun keeps the bucket, sets the password again, attaches nothing
    twice."""
    run_minio_init(compose, tmp_path)
    again = [args[:3] for args, _ in run_minio_init(compose, tmp_path)]
    assert ["mb", "--ignore-existing", f"minio/{env_of(compose, 'minio-init')['MINIO_BUCKET']}"] in again
    assert ["admin", "user", "add"] in again
    assert ["admin", "policy", "attach"] not in again
