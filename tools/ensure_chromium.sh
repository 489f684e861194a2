#!/usr/bin/env bash
# Headless Chromium for the tests that render HTML reports. Installs Debian's `chromium` package
# when no Chromium is on PATH and apt-get can be used as root; otherwise says so in one line and
# exits 0 (those tests then skip). Never fails the caller.
set -u
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" > /dev/null 2>&1; then exit 0; fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get > /dev/null 2>&1; then
  echo "ensure_chromium: no chromium and no apt-get as root; HTML-report tests will skip"
  exit 0
fi
echo "ensure_chromium: installing Debian's chromium (once) ..."
export DEBIAN_FRONTEND=noninteractive
if apt-get install -y -qq --no-install-recommends chromium > /dev/null 2>&1 \
   || { apt-get update -qq > /dev/null 2>&1 \
        && apt-get install -y -qq --no-install-recommends chromium > /dev/null 2>&1; }; then
  echo "ensure_chromium: installed $(command -v chromium)"
else
  echo "ensure_chromium: apt-get could not install chromium; HTML-report tests will skip"
fi
exit 0
