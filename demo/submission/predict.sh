#!/bin/sh
# The participant's model: parity of a number.
if [ $(( $1 % 2 )) -eq 0 ]; then echo even; else echo odd; fi
