from ecnreid.cli import app

app()
