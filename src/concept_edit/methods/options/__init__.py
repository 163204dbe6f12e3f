"""The built-in methods' options and inputs dataclasses, light to import (no torch), one module per method."""
