#!/bin/sh
# Ingestion: feed every input line to the participant's predict.sh and
# collect the predictions.
set -eu
input=$1 output=$2 submission=$3
echo "ingestion: $(wc -l < "$input/data.txt") samples"
while read -r x; do
  sh "$submission/predict.sh" "$x"
done < "$input/data.txt" > "$output/predictions.txt"
echo "ingestion: done"
