"""Test tooling: headless Chromium, local servers, the screenshot runner. Never imported by the library."""
