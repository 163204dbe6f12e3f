"""`python -m concept_edit.cli`: the `concept-edit` command."""

import sys

from concept_edit.cli.app import main

sys.exit(main())
