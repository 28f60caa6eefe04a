#!/usr/bin/env bash
# CPU side, before a GPU job: record the commit being measured and whether uncommitted edits travel with it.
cd "$(git rev-parse --show-toplevel)" && mkdir -p .gpu
dirty=false; git diff --quiet HEAD -- jit_kernels integration patches benchmarks || dirty=true
echo "$(git rev-parse HEAD) $dirty" > .gpu/commit && cat .gpu/commit
