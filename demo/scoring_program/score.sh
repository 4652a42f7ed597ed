#!/bin/sh
# Scoring: accuracy of the predictions against the reference.
set -eu
input=$1 output=$2
total=$(wc -l < "$input/ref/truth.txt")
right=$(paste "$input/res/predictions.txt" "$input/ref/truth.txt" | awk '$1 == $2' | wc -l)
accuracy=$(awk -v r="$right" -v t="$total" 'BEGIN { printf "%.4f", r / t }')
echo "scoring: $right of $total right"
printf '{"accuracy": %s}\n' "$accuracy" > "$output/scores.json"
printf '<html><body><h1>Accuracy %s</h1></body></html>\n' "$accuracy" > "$output/detailed_results.html"
