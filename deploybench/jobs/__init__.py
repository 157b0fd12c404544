"""The application tier: jobs that drive several stages (export, serving, load, edge) and
write one run folder's results.json. The CLI calls these; the stages never call each other."""
