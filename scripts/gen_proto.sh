#!/usr/bin/env bash
# Regenerates proto/sparegrid/v1/*_pb2*.py{,i} from the .proto files.
# Needs the dev extra (pinned grpcio-tools and mypy-protobuf): pip install -e '.[dev]'
set -euo pipefail
cd "$(dirname "$0")/../proto"
rm -f sparegrid/v1/*_pb2*.py sparegrid/v1/*_pb2*.pyi
python -m grpc_tools.protoc -I . \
  --python_out=. --mypy_out=. \
  --grpc_python_out=. --mypy_grpc_out=. \
  sparegrid/v1/*.proto
