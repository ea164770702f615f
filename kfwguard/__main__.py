from kfwguard.cli import main

main()
