from model_server.app import main

main()
