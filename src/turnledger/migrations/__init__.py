"""turnledger's Alembic environment, shipped inside the package so ``turnledger migrate`` works when installed."""
