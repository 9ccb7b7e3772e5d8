"""mitmlite: a small, fast intercepting HTTPS proxy built on trio and h11.

This module owns the version and, later, the public hook-script API; everything else in the
package is internal.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
