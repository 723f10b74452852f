#!/bin/sh
# The random domains point at the images, chains, FIFOs and shares of the main corpus.
exec sh "$(dirname "$0")/../domains/setup-images.sh" "$@"
