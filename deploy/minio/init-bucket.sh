#!/bin/sh
# The minio-init service (image minio/mc), once MinIO is up, as MinIO's root account: the bucket the platform
# stores its artifacts in, and the platform's own user `portfolio`, whose policy allows that bucket's objects
# and nothing else (no other bucket, no bucket creation, no admin API). The platform holds only that user's
# key (minio_secret_key); the root password (minio_root_password) stays with minio and this script.
# The bucket is made here, so the application's own make_bucket (registry/storage.py, only when
# bucket_exists says no) never runs and the user needs no s3:CreateBucket.
# Idempotent: every `docker compose up` runs it again; it keeps the bucket and its objects, sets the user's
# password from the secret again (a rotated minio_secret_key takes effect) and rewrites the policy.
# Passwords come from the secret files and reach mc on its standard input, never on a command line; mc's
# alias (holding the root password) lives in a temporary folder, removed on exit.
set -eu
ROOT_USER="${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
ROOT_PASSWORD_FILE="${MINIO_ROOT_PASSWORD_FILE:-/run/secrets/minio_root_password}"
APP_USER="${MINIO_APP_USER:?MINIO_APP_USER is not set}"
APP_PASSWORD_FILE="${MINIO_APP_PASSWORD_FILE:-/run/secrets/minio_secret_key}"
BUCKET="${MINIO_BUCKET:?MINIO_BUCKET is not set}"
ENDPOINT="${MINIO_URL:-http://minio:9000}"
POLICY="$BUCKET-objects"

# The bucket's name goes into the policy's JSON: S3's bucket-name characters only.
case "$BUCKET" in
    *[!a-z0-9.-]*)
        echo "MINIO_BUCKET=$BUCKET is not an S3 bucket name" >&2
        exit 1
        ;;
esac
if [ "$APP_USER" = "$ROOT_USER" ]; then
    echo "MINIO_APP_USER must not be MinIO's root user" >&2
    exit 1
fi

MC_CONFIG_DIR="$(mktemp -d)"
export MC_CONFIG_DIR
trap 'rm -rf "$MC_CONFIG_DIR"' EXIT

# Retried for a minute, in case MinIO is still starting (or restarting) when this runs.
tries=0
until mc alias set minio "$ENDPOINT" "$ROOT_USER" <"$ROOT_PASSWORD_FILE" >/dev/null; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "MinIO at $ENDPOINT does not take the root account's password" >&2
        exit 1
    fi
    sleep 2
done

mc mb --ignore-existing "minio/$BUCKET"

# What S3Store (portfolio/registry/storage.py) calls: bucket_exists (HeadBucket: ListBucket), presigned URLs
# (GetBucketLocation, asked when no region is set), stat/get/put/remove of objects, multipart uploads of
# large blobs (fput_object: PutObject, and AbortMultipartUpload / ListMultipartUploadParts on failure).
cat >"$MC_CONFIG_DIR/policy.json" <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": ["s3:GetBucketLocation", "s3:ListBucket"],
      "Resource": ["arn:aws:s3:::$BUCKET"]
    },
    {
      "Effect": "Allow",
      "Action": [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts"
      ],
      "Resource": ["arn:aws:s3:::$BUCKET/*"]
    }
  ]
}
JSON
mc admin policy create minio "$POLICY" "$MC_CONFIG_DIR/policy.json"

# Adding an existing user sets its password again.
mc admin user add minio "$APP_USER" <"$APP_PASSWORD_FILE"
if ! mc admin user info minio "$APP_USER" | grep '^PolicyName:' | grep -qF "$POLICY"; then
    mc admin policy attach minio "$POLICY" --user "$APP_USER"
fi
