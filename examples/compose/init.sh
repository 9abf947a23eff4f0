#!/bin/sh
# One-shot set-up of the docker-compose stack: the table on DynamoDB Local, the namespaces the
# example configs use, and stored limits for the entity rules of examples/entities/llm.yaml.
set -eu
E="--endpoint-url ${DYNAMODB_ENDPOINT:-http://dynamodb:8000}"
T="--name ${TABLE:-zael-demo}"
for i in $(seq 1 30); do
  zae-limiter deploy --table-only $T $E && break
  echo "waiting for DynamoDB Local ($i)"; sleep 1
done
zae-limiter namespace register demo $T $E
zae-limiter namespace register tenant-alpha $T $E
N="-N tenant-alpha"
zae-limiter entity create team-a $T $N $E
zae-limiter entity create key-1 --parent team-a --cascade $T $N $E
zae-limiter entity set-limits key-1 -r gpt-4 -l rpm:5 -l tpm:10000 $T $N $E
zae-limiter entity set-limits team-a -r gpt-4 -l tpm:100000 $T $N $E
echo "initialised"
