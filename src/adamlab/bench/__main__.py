from adamlab.bench.cli import main

main()
