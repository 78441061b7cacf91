from lpusim.cli import main

main()
