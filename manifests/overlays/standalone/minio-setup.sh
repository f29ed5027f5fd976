#!/bin/sh
# Job digits-minio-setup: the registry bucket and the two storage identities in this
# overlay's MinIO. Idempotent: running it again (re-applying the overlay after deleting
# the finished Job) changes nothing that is already right, and updates what is not
# (a policy edited in policies/, a rotated secret key).
#   bucket    $DIGITS_BUCKET (ConfigMap digits-config)
#   pipeline  Secret digits-s3          -> policy digits-pipeline: the bucket, fully
#   serving   Secret digits-s3-serving  -> policy digits-serving: read production.json and
#             versions/*, write feedback/* and submissions/*, list and read submissions/
# MinIO's root account (Secret digits-minio-root) is used here and by MinIO, nowhere else.
set -eu

here=$(dirname "$0")  # the ConfigMap digits-minio-setup, mounted at /setup
MC_CONFIG=/tmp/.mc  # the root filesystem is read-only; /tmp is an emptyDir
mcx() { mc --config-dir "$MC_CONFIG" "$@"; }

fail() { echo "minio-setup: $*" >&2; exit 1; }

[ "$PIPELINE_ACCESS_KEY" != "$SERVING_ACCESS_KEY" ] \
    || fail "digits-s3 and digits-s3-serving must hold different access keys"
for key in "$PIPELINE_ACCESS_KEY" "$SERVING_ACCESS_KEY"; do
    [ "$key" != "$MINIO_ROOT_USER" ] \
        || fail "an identity uses MinIO's root user; give it its own access key"
done
for identity in pipeline serving; do
    # The committed policies name one bucket; refuse to grant rights on another.
    case "$(cat "$here/digits-$identity.json")" in
        *"arn:aws:s3:::$DIGITS_BUCKET/"*) ;;
        *) fail "policies/digits-$identity.json does not name bucket $DIGITS_BUCKET:" \
                "regenerate it (python -m components.identities --bucket $DIGITS_BUCKET)" ;;
    esac
done

scheme=http
if [ "${DIGITS_S3_SECURE:-false}" = "true" ]; then scheme=https; fi
tries=0
# `alias set` checks the server answers: wait for MinIO to start (the Job starts with it).
until mcx alias set digits "$scheme://$DIGITS_S3_ENDPOINT" \
        "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || fail "MinIO at $scheme://$DIGITS_S3_ENDPOINT did not answer"
    sleep 5
done

mcx mb --ignore-existing "digits/$DIGITS_BUCKET"
mcx admin policy create digits digits-pipeline "$here/digits-pipeline.json"
mcx admin policy create digits digits-serving "$here/digits-serving.json"
mcx admin user add digits "$PIPELINE_ACCESS_KEY" "$PIPELINE_SECRET_KEY"
mcx admin user add digits "$SERVING_ACCESS_KEY" "$SERVING_SECRET_KEY"

# Attaching a policy a user already has is an error to MinIO; here it means "done".
attach() {
    if ! output=$(mcx admin policy attach digits "$1" --user "$2" 2>&1); then
        case "$output" in
            *already*) echo "policy $1 already attached to $2" ;;
            *) echo "$output" >&2; return 1 ;;
        esac
    fi
}
attach digits-pipeline "$PIPELINE_ACCESS_KEY"
attach digits-serving "$SERVING_ACCESS_KEY"
echo "minio-setup: bucket $DIGITS_BUCKET, users with policies digits-pipeline and digits-serving"
