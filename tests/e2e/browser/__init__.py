"""The JavaScript client (clients/js) in Debian's chromium against real tidings servers."""
