"""``python -m turnledger`` runs the ``turnledger`` command."""

from turnledger.cli import main

if __name__ == "__main__":
    main()
